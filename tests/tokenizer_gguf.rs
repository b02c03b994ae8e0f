//! Tokenizers built from GGUF metadata, checked against transformers'
//! tokenizer loaded from the same files (tests/fixtures/gguf_tokenizer/,
//! written by tools/gen_gguf_tokenizer_fixture.py), and the errors a damaged
//! file gives.

mod common;

use std::path::{Path, PathBuf};

use dora_wgpu::{ChatMessage, Tokenizer};
use serde_json::Value as Json;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf_tokenizer")
}

fn expected() -> serde_json::Map<String, Json> {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
    match serde_json::from_str(&text).unwrap() {
        Json::Object(o) => o,
        _ => panic!("expected.json is not an object"),
    }
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Checks `tok` against one record of expected.json (or of the script's
/// `--check` output for a real file).
fn check(name: &str, tok: &Tokenizer, rec: &Json) {
    assert_eq!(
        tok.vocab_size() as u64,
        rec["vocab_size"].as_u64().unwrap(),
        "{name}: vocab size"
    );
    assert_eq!(tok.bos_token(), rec["bos_token"].as_str(), "{name}: bos");
    assert_eq!(tok.eos_token(), rec["eos_token"].as_str(), "{name}: eos");
    assert_eq!(tok.pad_token(), rec["pad_token"].as_str(), "{name}: pad");
    let id = |v: &Json| v.as_u64().map(|x| x as u32);
    assert_eq!(
        tok.bos_token_id(),
        id(&rec["bos_token_id"]),
        "{name}: bos id"
    );
    assert_eq!(
        tok.eos_token_id(),
        id(&rec["eos_token_id"]),
        "{name}: eos id"
    );
    assert_eq!(
        tok.pad_token_id(),
        id(&rec["pad_token_id"]),
        "{name}: pad id"
    );
    assert_eq!(
        tok.eos_token_ids(),
        id(&rec["eos_token_id"]).into_iter().collect::<Vec<_>>()
    );
    for case in rec["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let plain = tok.encode(text, false).unwrap();
        assert_eq!(plain, ids(&case["ids"]), "{name}: ids of {text:?}");
        let with = tok.encode(text, true).unwrap();
        assert_eq!(
            with,
            ids(&case["ids_with_special"]),
            "{name}: ids with special tokens of {text:?}"
        );
        assert_eq!(
            tok.decode(&with, false).unwrap(),
            case["decode"].as_str().unwrap(),
            "{name}: decode of {text:?}"
        );
        assert_eq!(
            tok.decode(&with, true).unwrap(),
            case["decode_skip_special"].as_str().unwrap(),
            "{name}: decode (skip special) of {text:?}"
        );
    }
    match rec.get("chat_template") {
        Some(t) => {
            assert_eq!(tok.chat_template(), t.as_str(), "{name}: template");
            let conv = [
                ChatMessage::new("user", "Hello, who are you?"),
                ChatMessage::new("assistant", "I am a tiny test model."),
            ];
            assert_eq!(
                tok.apply_chat_template(&conv, false).unwrap(),
                rec["chat"].as_str().unwrap(),
                "{name}: chat"
            );
            assert_eq!(
                tok.apply_chat_template(&conv[..1], true).unwrap(),
                rec["chat_generation_prompt"].as_str().unwrap(),
                "{name}: chat with generation prompt"
            );
        }
        None => assert!(tok.chat_template().is_none(), "{name}: unexpected template"),
    }
}

#[test]
fn gguf_tokenizers_match_transformers() {
    let all = expected();
    assert!(all.len() >= 8, "fixtures missing");
    for (name, rec) in &all {
        let path = fixture_dir().join(name);
        let tok = Tokenizer::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(tok.dir(), path.as_path());
        check(name, &tok, rec);
    }
}

/// A real GGUF against the record `tools/gen_gguf_tokenizer_fixture.py
/// --check FILE.gguf OUT.json` wrote: `DORA_GGUF_TOKENIZER_CHECK=FILE.gguf:OUT.json
/// cargo test --test tokenizer_gguf -- --ignored`.
#[test]
#[ignore = "needs DORA_GGUF_TOKENIZER_CHECK=FILE.gguf:OUT.json"]
fn real_gguf_matches_transformers() {
    let spec = std::env::var("DORA_GGUF_TOKENIZER_CHECK").expect("DORA_GGUF_TOKENIZER_CHECK");
    let (file, out) = spec.rsplit_once(':').expect("FILE.gguf:OUT.json");
    let rec: Json = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    let t0 = std::time::Instant::now();
    let tok = Tokenizer::load(file).unwrap();
    eprintln!("loaded {file} in {:?}", t0.elapsed());
    check(file, &tok, &rec);
    eprintln!("{} strings equal", rec["cases"].as_array().unwrap().len());
}

#[test]
fn load_picks_gguf_by_magic_and_dir_otherwise() {
    let dir = common::temp_dir("ggtok-magic");
    let renamed = dir.join("model.bin");
    std::fs::copy(fixture_dir().join("qwen2_bpe.gguf"), &renamed).unwrap();
    let tok = Tokenizer::load(&renamed).unwrap();
    assert_eq!(tok.dir(), renamed.as_path());
    let hf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-qwen2");
    let tok = Tokenizer::load(&hf).unwrap();
    assert_eq!(tok.dir(), hf.as_path());
    let other = dir.join("notes.txt");
    std::fs::write(&other, "hello").unwrap();
    assert!(Tokenizer::load(&other).is_err());
}

// ---- damaged files -------------------------------------------------------

enum V {
    U32(u32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn write_gguf(path: &Path, kv: &[(&str, V)]) {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(0u64.to_le_bytes());
    out.extend((kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        put_str(&mut out, k);
        match v {
            V::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            V::Bool(b) => {
                out.extend(7u32.to_le_bytes());
                out.push(*b as u8);
            }
            V::Str(s) => {
                out.extend(8u32.to_le_bytes());
                put_str(&mut out, s);
            }
            V::Strs(list) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((list.len() as u64).to_le_bytes());
                for s in list {
                    put_str(&mut out, s);
                }
            }
            V::I32s(list) => {
                out.extend(9u32.to_le_bytes());
                out.extend(5u32.to_le_bytes());
                out.extend((list.len() as u64).to_le_bytes());
                for x in list {
                    out.extend(x.to_le_bytes());
                }
            }
        }
    }
    std::fs::write(path, out).unwrap();
}

fn strs(v: &[&str]) -> V {
    V::Strs(v.iter().map(|s| s.to_string()).collect())
}

/// A small valid byte-level tokenizer, with `change` applied to its keys.
fn damaged(name: &str, change: impl FnOnce(&mut Vec<(&'static str, V)>)) -> (PathBuf, String) {
    let mut kv: Vec<(&'static str, V)> = vec![
        ("general.architecture", V::Str("llama".into())),
        ("tokenizer.ggml.model", V::Str("gpt2".into())),
        ("tokenizer.ggml.pre", V::Str("llama-bpe".into())),
        ("tokenizer.ggml.tokens", strs(&["<|end|>", "a", "b", "ab"])),
        ("tokenizer.ggml.token_type", V::I32s(vec![3, 1, 1, 1])),
        ("tokenizer.ggml.merges", strs(&["a b"])),
        ("tokenizer.ggml.bos_token_id", V::U32(0)),
        ("tokenizer.ggml.eos_token_id", V::U32(0)),
        ("tokenizer.ggml.add_bos_token", V::Bool(false)),
    ];
    change(&mut kv);
    let dir = common::temp_dir(&format!("ggtok-{name}"));
    let path = dir.join(format!("{name}.gguf"));
    write_gguf(&path, &kv);
    let msg = match Tokenizer::load(&path) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    (path, msg)
}

type Kv = Vec<(&'static str, V)>;
type Change = Box<dyn FnOnce(&mut Kv)>;

fn set(kv: &mut [(&'static str, V)], key: &str, v: V) {
    kv.iter_mut().find(|(k, _)| *k == key).unwrap().1 = v;
}

#[test]
fn the_undamaged_file_loads() {
    let (path, msg) = damaged("valid", |_| {});
    assert_eq!(msg, "");
    let tok = Tokenizer::load(&path).unwrap();
    assert_eq!(tok.encode("abab<|end|>", false).unwrap(), vec![3, 3, 0]);
}

#[test]
fn damaged_files_name_the_key() {
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "no-tokens",
            Box::new(|kv| kv.retain(|(k, _)| *k != "tokenizer.ggml.tokens")),
            "tokenizer.ggml.tokens",
        ),
        (
            "unknown-model",
            Box::new(|kv| set(kv, "tokenizer.ggml.model", V::Str("rwkv".into()))),
            "tokenizer.ggml.model",
        ),
        (
            "bad-merge",
            Box::new(|kv| set(kv, "tokenizer.ggml.merges", strs(&["a b", "ab"]))),
            "tokenizer.ggml.merges",
        ),
        (
            "bos-range",
            Box::new(|kv| set(kv, "tokenizer.ggml.bos_token_id", V::U32(4))),
            "tokenizer.ggml.bos_token_id",
        ),
        (
            "unknown-arch",
            Box::new(|kv| set(kv, "general.architecture", V::Str("gemma".into()))),
            "general.architecture",
        ),
        (
            "no-model",
            Box::new(|kv| kv.retain(|(k, _)| *k != "tokenizer.ggml.model")),
            "tokenizer.ggml.model",
        ),
        (
            "types-length",
            Box::new(|kv| set(kv, "tokenizer.ggml.token_type", V::I32s(vec![1]))),
            "tokenizer.ggml.token_type",
        ),
        (
            "no-merges",
            Box::new(|kv| kv.retain(|(k, _)| *k != "tokenizer.ggml.merges")),
            "tokenizer.ggml.merges",
        ),
        (
            "spm-no-scores",
            Box::new(|kv| {
                set(kv, "tokenizer.ggml.model", V::Str("llama".into()));
                kv.retain(|(k, _)| *k != "tokenizer.ggml.merges");
            }),
            "tokenizer.ggml.scores",
        ),
    ];
    for (name, change, key) in cases {
        let (path, msg) = damaged(name, change);
        assert!(!msg.is_empty(), "{name}: loaded");
        assert!(msg.contains(key), "{name}: {msg:?} does not name {key}");
        assert!(
            msg.contains(&path.display().to_string()),
            "{name}: {msg:?} does not name the file"
        );
        assert!(!msg.contains('\n'), "{name}: {msg:?} is not one line");
    }
}
