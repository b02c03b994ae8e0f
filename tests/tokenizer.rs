//! Tokenizer and chat-template tests against Hugging Face transformers.
//!
//! Every expected id and string comes from `AutoTokenizer` (transformers 5),
//! written by `tools/gen_fixtures.py` into `tests/fixtures/models/reference.json`
//! (and by `tools/gen_tokenizer_fixture.py` into `tests/fixtures/tokenizers/`).
//! No GPU is needed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use dora_wgpu::text::{ChatMessage, Tokenizer};
use dora_wgpu::Error;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn models_dir() -> PathBuf {
    root().join("tests/fixtures/models")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn reference() -> Value {
    read_json(&models_dir().join("reference.json"))
}

/// `reference.json`'s `tokenizer` section: model name → expectations.
fn tokenizer_refs() -> Vec<(String, Value)> {
    let r = reference();
    let t = r["tokenizer"]
        .as_object()
        .expect("reference.json: tokenizer section");
    assert!(!t.is_empty(), "reference.json: no tokenizer entries");
    t.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a list of ids, got {v}"))
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn messages(v: &Value) -> Vec<ChatMessage> {
    serde_json::from_value(v.clone()).expect("messages")
}

fn load(model: &str) -> Tokenizer {
    Tokenizer::from_dir(models_dir().join(model)).unwrap_or_else(|e| panic!("{model}: {e}"))
}

/// Decodes `ids` one token at a time; the pieces plus `finish` must equal `decode`.
fn stream_decode(tok: &Tokenizer, ids: &[u32], skip: bool) -> String {
    let mut stream = tok.decode_stream(skip);
    let mut out = String::new();
    for &id in ids {
        if let Some(piece) = stream.step(id).unwrap() {
            assert!(!piece.is_empty(), "empty piece for token {id}");
            out.push_str(&piece);
        }
    }
    out.push_str(&stream.finish().unwrap());
    out
}

/// A fresh empty directory under the system temp dir.
fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "dora-wgpu-tok-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn assert_one_line(e: &Error, must_name: &str) -> String {
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "error is not one line: {msg:?}");
    assert!(
        msg.contains(must_name),
        "error {msg:?} does not name {must_name:?}"
    );
    msg
}

// ---------------------------------------------------------------------------
// Tiny models of reference.json
// ---------------------------------------------------------------------------

#[test]
fn special_tokens_and_vocab_match_transformers() {
    for (model, r) in tokenizer_refs() {
        let tok = load(&model);
        assert_eq!(
            tok.vocab_size() as u64,
            r["vocab_size"].as_u64().unwrap(),
            "{model}: vocab_size"
        );
        for (text, id) in r["special_tokens"].as_object().unwrap() {
            assert_eq!(
                tok.token_to_id(text),
                Some(id.as_u64().unwrap() as u32),
                "{model}: {text}"
            );
            assert_eq!(
                tok.id_to_token(id.as_u64().unwrap() as u32).as_deref(),
                Some(text.as_str())
            );
        }
        assert_eq!(
            tok.bos_token(),
            r["bos_token"].as_str(),
            "{model}: bos_token"
        );
        assert_eq!(
            tok.eos_token(),
            r["eos_token"].as_str(),
            "{model}: eos_token"
        );
        assert_eq!(
            tok.pad_token(),
            r["pad_token"].as_str(),
            "{model}: pad_token"
        );
        let bos = r["bos_token"].as_str().map(|t| tok.token_to_id(t).unwrap());
        assert_eq!(tok.bos_token_id(), bos, "{model}: bos_token_id");

        // Whether encode(add_special_tokens=True) prepends BOS, as transformers does.
        let with = tok.encode("fox", true).unwrap();
        let without = tok.encode("fox", false).unwrap();
        let adds_bos = r["post_processor_adds_bos"].as_bool().unwrap();
        if adds_bos {
            assert_eq!(with[0], bos.unwrap(), "{model}: BOS first");
            assert_eq!(&with[1..], &without[..], "{model}");
        } else {
            assert_eq!(with, without, "{model}");
        }
    }
}

#[test]
fn encode_matches_transformers() {
    for (model, r) in tokenizer_refs() {
        let tok = load(&model);
        let strings = r["strings"].as_array().unwrap();
        assert!(strings.len() >= 5, "{model}: too few reference strings");
        for s in strings {
            let text = s["text"].as_str().unwrap();
            assert_eq!(
                tok.encode(text, true).unwrap(),
                ids(&s["ids_with_special"]),
                "{model}: {text:?} with special tokens"
            );
            assert_eq!(
                tok.encode(text, false).unwrap(),
                ids(&s["ids_without_special"]),
                "{model}: {text:?} without special tokens"
            );
        }
    }
}

#[test]
fn decode_round_trips() {
    for (model, r) in tokenizer_refs() {
        let tok = load(&model);
        let specials: Vec<u32> = r["special_tokens"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        for s in r["strings"].as_array().unwrap() {
            let text = s["text"].as_str().unwrap();
            let plain = ids(&s["ids_without_special"]);
            let with = ids(&s["ids_with_special"]);
            // Byte-level BPE is lossless: the ids decode back to the text.
            assert_eq!(
                tok.decode(&plain, false).unwrap(),
                text,
                "{model}: decode {text:?}"
            );
            // skip_special_tokens drops exactly the special tokens.
            let kept: Vec<u32> = with
                .iter()
                .copied()
                .filter(|i| !specials.contains(i))
                .collect();
            assert_eq!(
                tok.decode(&with, true).unwrap(),
                tok.decode(&kept, false).unwrap(),
                "{model}: skip_special_tokens on {text:?}"
            );
            // Re-encoding the decoded text gives the same ids.
            assert_eq!(
                tok.encode(&tok.decode(&plain, false).unwrap(), false)
                    .unwrap(),
                plain
            );
        }
    }
}

#[test]
fn streaming_decode_equals_full_decode() {
    for (model, r) in tokenizer_refs() {
        let tok = load(&model);
        let mut cases: Vec<Vec<u32>> = r["strings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| ids(&s["ids_with_special"]))
            .collect();
        for key in ["with_generation_prompt", "without_generation_prompt"] {
            cases.push(ids(&r["chat_template"][key]["ids"]));
        }
        for case in &cases {
            for skip in [false, true] {
                let full = tok.decode(case, skip).unwrap();
                assert_eq!(
                    stream_decode(&tok, case, skip),
                    full,
                    "{model}: skip={skip} {case:?}"
                );
            }
        }
        // Multi-byte characters split over several byte tokens are never cut.
        let text = "ü 日本語 😀 — é";
        let bytes = tok.encode(text, false).unwrap();
        let mut stream = tok.decode_stream(false);
        let mut out = String::new();
        for &id in &bytes {
            if let Some(p) = stream.step(id).unwrap() {
                assert!(
                    !p.contains('\u{FFFD}'),
                    "{model}: piece {p:?} cuts a character"
                );
                out.push_str(&p);
            }
        }
        assert_eq!(stream.finish().unwrap(), "", "{model}: nothing left over");
        assert_eq!(out, text, "{model}");
    }
}

#[test]
fn chat_template_matches_transformers() {
    for (model, r) in tokenizer_refs() {
        let tok = load(&model);
        let c = &r["chat_template"];
        let msgs = messages(&c["messages"]);
        for (agp, key) in [
            (false, "without_generation_prompt"),
            (true, "with_generation_prompt"),
        ] {
            let text = tok.apply_chat_template(&msgs, agp).unwrap();
            assert_eq!(text, c[key]["text"].as_str().unwrap(), "{model}: {key}");
            assert_eq!(
                tok.encode(&text, false).unwrap(),
                ids(&c[key]["ids"]),
                "{model}: {key} ids"
            );
        }
        // The template came from where transformers took it.
        let source = match r["chat_template_in"].as_str().unwrap() {
            "chat_template.jinja" => {
                std::fs::read_to_string(models_dir().join(&model).join("chat_template.jinja"))
                    .unwrap()
            }
            "tokenizer_config.json" => {
                let cfg = read_json(&models_dir().join(&model).join("tokenizer_config.json"));
                cfg["chat_template"].as_str().unwrap().to_string()
            }
            other => panic!("{model}: unknown chat_template_in {other}"),
        };
        assert_eq!(tok.chat_template(), Some(source.as_str()), "{model}");
    }
}

#[test]
fn eos_ids_come_from_generation_config_and_tokenizer() {
    for (model, r) in tokenizer_refs() {
        let tok = load(&model);
        let gen = read_json(&models_dir().join(&model).join("generation_config.json"));
        let mut want: Vec<u32> = match &gen["eos_token_id"] {
            Value::Array(a) => a.iter().map(|x| x.as_u64().unwrap() as u32).collect(),
            Value::Number(n) => vec![n.as_u64().unwrap() as u32],
            _ => vec![],
        };
        let eos = tok.token_to_id(r["eos_token"].as_str().unwrap()).unwrap();
        assert_eq!(tok.eos_token_id(), Some(eos));
        if !want.contains(&eos) {
            want.push(eos);
        }
        assert_eq!(tok.eos_token_ids(), want, "{model}");
    }
}

/// The tokenization of every eval line (text, prompt/completion, messages) and
/// of the generation prompts, and HF's decode of the generated ids.
#[test]
fn eval_lines_and_generation_match_transformers() {
    let r = reference();
    let eval_file = root().join(r["eval_file"].as_str().unwrap());
    let lines: Vec<Value> = std::fs::read_to_string(&eval_file)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (model, ev) in r["eval"].as_object().unwrap() {
        let tok = load(model);
        let want = ev["lines"].as_array().unwrap();
        assert_eq!(want.len(), lines.len(), "{model}: eval line count");
        for (line, w) in lines.iter().zip(want) {
            let got = if let Some(text) = line["text"].as_str() {
                tok.encode(text, true).unwrap()
            } else if let Some(prompt) = line["prompt"].as_str() {
                let mut p = tok.encode(prompt, true).unwrap();
                p.extend(
                    tok.encode(line["completion"].as_str().unwrap(), false)
                        .unwrap(),
                );
                p
            } else {
                // A JSONL {"messages": [...]} line deserializes into ChatMessage.
                #[derive(serde::Deserialize)]
                struct Line {
                    messages: Vec<ChatMessage>,
                }
                let l: Line = serde_json::from_value(line.clone()).unwrap();
                let text = tok.apply_chat_template(&l.messages, false).unwrap();
                tok.encode(&text, false).unwrap()
            };
            assert_eq!(got, ids(&w["ids"]), "{model}: eval line {line}");
        }
    }
    for (model, variants) in r["generate"].as_object().unwrap() {
        let tok = load(model);
        for (variant, g) in variants.as_object().unwrap() {
            let prompt = g["prompt"].as_str().unwrap();
            assert_eq!(
                tok.encode(prompt, false).unwrap(),
                ids(&g["prompt_ids"]),
                "{model}/{variant}: prompt ids"
            );
            let gen = ids(&g["generated_ids"]);
            let text = g["generated_text"].as_str().unwrap();
            assert_eq!(
                tok.decode(&gen, false).unwrap(),
                text,
                "{model}/{variant}: generated text"
            );
            assert_eq!(
                stream_decode(&tok, &gen, false),
                text,
                "{model}/{variant}: streamed"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Extra tokenizers of tools/gen_tokenizer_fixture.py
// ---------------------------------------------------------------------------

/// Each directory under tests/fixtures/tokenizers/ holds a model directory's
/// tokenizer files and `expected.json` from transformers.
#[test]
fn extra_tokenizers_match_transformers() {
    let base = root().join("tests/fixtures/tokenizers");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&base)
        .unwrap_or_else(|e| panic!("{}: {e}", base.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expected.json").is_file())
        .collect();
    dirs.sort();
    assert!(
        !dirs.is_empty(),
        "no tokenizer fixtures under {}",
        base.display()
    );
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let want = read_json(&dir.join("expected.json"));
        let tok = Tokenizer::from_dir(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            tok.vocab_size() as u64,
            want["len"].as_u64().unwrap(),
            "{name}: len(tokenizer)"
        );
        assert_eq!(
            tok.bos_token_id().map(u64::from),
            want["bos_token_id"].as_u64(),
            "{name}: bos id"
        );
        assert_eq!(
            tok.eos_token_id().map(u64::from),
            want["eos_token_id"].as_u64(),
            "{name}: eos id"
        );
        let gen_path = dir.join("generation_config.json");
        if gen_path.is_file() {
            let gen = read_json(&gen_path);
            let list = ids(&gen["eos_token_id"]);
            assert_eq!(
                &tok.eos_token_ids()[..list.len()],
                &list[..],
                "{name}: stop ids"
            );
        }
        for s in want["strings"].as_array().unwrap() {
            let text = s["text"].as_str().unwrap();
            let with = ids(&s["ids_with_special"]);
            let without = ids(&s["ids_without_special"]);
            assert_eq!(
                tok.encode(text, true).unwrap(),
                with,
                "{name}: {text:?} with special tokens"
            );
            assert_eq!(
                tok.encode(text, false).unwrap(),
                without,
                "{name}: {text:?} without special tokens"
            );
            let dec = tok.decode(&with, false).unwrap();
            assert_eq!(
                dec,
                s["decode"].as_str().unwrap(),
                "{name}: decode {text:?}"
            );
            assert_eq!(
                tok.decode(&with, true).unwrap(),
                s["decode_skip"].as_str().unwrap(),
                "{name}: decode skip {text:?}"
            );
            for skip in [false, true] {
                assert_eq!(
                    stream_decode(&tok, &with, skip),
                    tok.decode(&with, skip).unwrap(),
                    "{name}: streamed {text:?}"
                );
            }
        }
        for c in want["chats"].as_array().unwrap() {
            let msgs = messages(&c["messages"]);
            let agp = c["add_generation_prompt"].as_bool().unwrap();
            match c.get("text").and_then(Value::as_str) {
                Some(text) => {
                    let got = tok
                        .apply_chat_template(&msgs, agp)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_eq!(got, text, "{name}: chat {msgs:?} agp={agp}");
                    assert_eq!(
                        tok.encode(&got, false).unwrap(),
                        ids(&c["ids"]),
                        "{name}: chat ids"
                    );
                }
                None => {
                    // transformers raised (raise_exception): so must we, in one line.
                    let e = tok
                        .apply_chat_template(&msgs, agp)
                        .expect_err("template should raise");
                    let hf = c["error"].as_str().unwrap();
                    assert_one_line(&e, hf);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

#[test]
fn missing_directory_is_one_line_error() {
    let dir = root().join("tests/fixtures/models/no-such-model");
    let e = Tokenizer::from_dir(&dir).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert_one_line(&e, "no-such-model");
}

#[test]
fn missing_tokenizer_json_is_one_line_error() {
    let d = temp_dir("missing");
    std::fs::copy(
        models_dir().join("tiny-llama/tokenizer_config.json"),
        d.join("tokenizer_config.json"),
    )
    .unwrap();
    let e = Tokenizer::from_dir(&d).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert_one_line(&e, &d.join("tokenizer.json").display().to_string());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn malformed_json_names_file_and_problem() {
    // Broken tokenizer.json.
    let d = temp_dir("badtok");
    std::fs::write(d.join("tokenizer.json"), "{\"model\": {\"type\": \"BPE\",").unwrap();
    let e = Tokenizer::from_dir(&d).unwrap_err();
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    assert_one_line(&e, &d.join("tokenizer.json").display().to_string());
    std::fs::remove_dir_all(&d).unwrap();

    // Valid tokenizer.json, broken tokenizer_config.json.
    let d = temp_dir("badcfg");
    std::fs::copy(
        models_dir().join("tiny-llama/tokenizer.json"),
        d.join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(d.join("tokenizer_config.json"), "{\"eos_token\": ").unwrap();
    let e = Tokenizer::from_dir(&d).unwrap_err();
    let msg = assert_one_line(&e, &d.join("tokenizer_config.json").display().to_string());
    assert!(msg.contains("invalid JSON"), "{msg}");

    // Well-formed JSON, wrong field type.
    std::fs::write(d.join("tokenizer_config.json"), "{\"eos_token\": 5}").unwrap();
    let e = Tokenizer::from_dir(&d).unwrap_err();
    let msg = assert_one_line(&e, "tokenizer_config.json");
    assert!(msg.contains("eos_token"), "{msg}");

    // generation_config.json with a bad eos_token_id.
    std::fs::write(d.join("tokenizer_config.json"), "{}").unwrap();
    std::fs::write(
        d.join("generation_config.json"),
        "{\"eos_token_id\": \"x\"}",
    )
    .unwrap();
    let e = Tokenizer::from_dir(&d).unwrap_err();
    let msg = assert_one_line(&e, "generation_config.json");
    assert!(msg.contains("eos_token_id"), "{msg}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn missing_chat_template_is_one_line_error() {
    let d = temp_dir("notemplate");
    std::fs::copy(
        models_dir().join("tiny-llama/tokenizer.json"),
        d.join("tokenizer.json"),
    )
    .unwrap();
    let tok = Tokenizer::from_dir(&d).unwrap();
    assert!(tok.chat_template().is_none());
    let e = tok
        .apply_chat_template(&[ChatMessage::new("user", "hi")], true)
        .unwrap_err();
    let msg = assert_one_line(&e, &d.display().to_string());
    assert!(msg.contains("chat template"), "{msg}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn template_list_without_default_fails_only_when_used() {
    let d = temp_dir("nodefault");
    std::fs::copy(
        models_dir().join("tiny-llama/tokenizer.json"),
        d.join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        d.join("tokenizer_config.json"),
        r#"{"chat_template": [{"name": "tool_use", "template": "{{ messages }}"}]}"#,
    )
    .unwrap();
    let tok = Tokenizer::from_dir(&d).unwrap();
    assert_eq!(
        tok.encode("fox", false).unwrap(),
        load("tiny-llama").encode("fox", false).unwrap()
    );
    let e = tok
        .apply_chat_template(&[ChatMessage::new("user", "x")], false)
        .unwrap_err();
    let msg = assert_one_line(&e, "tokenizer_config.json");
    assert!(msg.contains("default"), "{msg}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn byte_level_file_declaring_llama_tokenizer_loads_as_is() {
    // transformers 5 loads a byte-level tokenizer.json declared as
    // LlamaTokenizer (Llama-3-style checkpoints) with the file's own pipeline;
    // the ids are transformers' for this directory.
    let d = temp_dir("bytelevel-llama-class");
    let src = models_dir().join("tiny-llama3");
    std::fs::copy(src.join("tokenizer.json"), d.join("tokenizer.json")).unwrap();
    let mut cfg = read_json(&src.join("tokenizer_config.json"));
    cfg["tokenizer_class"] = "LlamaTokenizer".into();
    std::fs::write(d.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let tok = Tokenizer::from_dir(&d).unwrap();
    let base = load("tiny-llama3");
    for (text, want) in [
        ("Hello world", vec![42, 71, 276, 81, 278, 316, 355]),
        (
            "  two  spaces",
            vec![223, 261, 89, 81, 223, 269, 82, 67, 69, 267],
        ),
        (" lead", vec![300, 71, 67, 70]),
    ] {
        assert_eq!(tok.encode(text, true).unwrap(), want, "{text:?}");
        assert_eq!(base.encode(text, true).unwrap(), want, "{text:?}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn tokenizer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Tokenizer>();
}

#[test]
fn template_errors_are_one_line_and_name_the_template_file() {
    let d = temp_dir("raise");
    std::fs::copy(
        models_dir().join("tiny-llama/tokenizer.json"),
        d.join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        d.join("chat_template.jinja"),
        "{% for m in messages %}\n{% if m.role == 'tool' %}{{ raise_exception('tool messages are not supported') }}{% endif %}{{ m.content }}\n{% endfor %}",
    )
    .unwrap();
    let tok = Tokenizer::from_dir(&d).unwrap();
    let e = tok
        .apply_chat_template(&[ChatMessage::new("tool", "x")], false)
        .unwrap_err();
    let msg = assert_one_line(&e, "tool messages are not supported");
    assert!(msg.contains("chat_template.jinja"), "{msg}");

    // A syntax error is reported when the template is used, not at load.
    std::fs::write(
        d.join("chat_template.jinja"),
        "{% for m in messages %}{{ m.content }",
    )
    .unwrap();
    let tok = Tokenizer::from_dir(&d).unwrap();
    let e = tok
        .apply_chat_template(&[ChatMessage::new("user", "x")], false)
        .unwrap_err();
    assert_one_line(&e, "chat_template.jinja");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn random_ids_stream_as_they_decode() {
    // Random id sequences (special tokens, pieces whose leading space a
    // decoder strips or keeps by position) streamed one at a time equal the
    // full decode. Byte-fallback tokens are left out: random bytes are not
    // UTF-8, and their replacement characters depend on the window.
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root().join("tests/fixtures/tokenizers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("tokenizer.json").is_file())
        .collect();
    dirs.extend(
        [
            "tiny-llama",
            "tiny-llama3",
            "tiny-gemma3",
            "tiny-phi3",
            "tiny-qwen2",
        ]
        .map(|m| models_dir().join(m)),
    );
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for dir in dirs {
        let tok = Tokenizer::from_dir(&dir).unwrap();
        let n = tok.vocab_size() as u64;
        for _ in 0..200 {
            let ids: Vec<u32> = (0..24)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % n) as u32
                })
                .filter(|&id| !tok.id_to_token(id).unwrap_or_default().starts_with("<0x"))
                .collect();
            for skip in [false, true] {
                assert_eq!(
                    stream_decode(&tok, &ids, skip),
                    tok.decode(&ids, skip).unwrap(),
                    "{}: {ids:?} skip={skip}",
                    dir.display()
                );
            }
        }
    }
}
