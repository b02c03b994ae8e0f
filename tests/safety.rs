//! Nothing lost, nothing silently wrong: one test per way a user's files or
//! numbers could be harmed (issue 14). Commands that must not touch a file
//! are checked byte for byte; refusals are checked for the one line that
//! names what is at fault.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use dora_wgpu::io::hf::ModelConfig;
use dora_wgpu::io::{
    read_safetensors, write_atomically, write_safetensors, AdapterWeights, HostTensor,
};
use dora_wgpu::nn::Llama;
use dora_wgpu::text::data::{read_jsonl, Example};
use dora_wgpu::{tasks, Tokenizer};
use serde_json::Value;

fn model_dir() -> PathBuf {
    fixture("models/tiny-llama")
}

fn adapter_dir() -> PathBuf {
    fixture("models/tiny-llama-dora")
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A scratch folder `name` holding a copy of the tiny model in `model/`.
fn scratch_model(name: &str) -> (PathBuf, PathBuf) {
    let root = temp_dir(name);
    let model = root.join("model");
    copy_dir(&model_dir(), &model);
    (root, model)
}

/// Rewrites a JSON file with `edit` applied to its top-level object.
fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// A copy of the tiny model with `config.json` edited.
fn model_with_config(
    name: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, Value>),
) -> PathBuf {
    let (_, dir) = scratch_model(name);
    edit_json(&dir.join("config.json"), edit);
    dir
}

/// A copy of the tiny model's DoRA adapter with `adapter_config.json` edited
/// and its tensors filtered by `keep`.
fn adapter_with(
    name: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, Value>),
    keep: impl Fn(&str) -> bool,
) -> PathBuf {
    let dir = temp_dir(name).join("adapter");
    copy_dir(&adapter_dir(), &dir);
    edit_json(&dir.join("adapter_config.json"), edit);
    let path = dir.join("adapter_model.safetensors");
    let tensors: BTreeMap<String, HostTensor> = read_safetensors(&path)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| keep(k))
        .collect();
    write_safetensors(&path, &tensors, None).unwrap();
    dir
}

// 1. A new run never replaces another run's files unless --overwrite, and
//    --overwrite names what it replaces.
#[test]
fn train_refuses_a_directory_holding_another_run() {
    let root = temp_dir("safety-run");
    let run_dir = root.join("run");
    let step = run_dir.join("checkpoints/step-000040");
    std::fs::create_dir_all(&step).unwrap();
    copy_dir(&adapter_dir(), &step);
    std::fs::write(step.join("trainer_state.json"), "{\"step\": 40}").unwrap();
    copy_dir(&adapter_dir(), &run_dir);
    std::fs::write(run_dir.join("metrics.jsonl"), "{\"step\":1,\"loss\":2.5}\n").unwrap();
    std::fs::write(run_dir.join("loss.svg"), "<svg/>").unwrap();
    std::fs::write(run_dir.join("notes.txt"), "my notes").unwrap();
    let before = snapshot(&run_dir);
    let data = data_dir_with(
        &root,
        &std::fs::read_to_string(fixture("data/eval.jsonl")).unwrap(),
    );
    let (run, data_s, model) = (s(&run_dir), s(&data), s(&model_dir()));
    let refusal = [
        "already holds a run",
        "checkpoints/",
        "metrics.jsonl",
        "adapter_model.safetensors",
        "loss.svg",
        "--overwrite",
    ];
    // The embedded demo (no --model/--data) and a real run alike.
    cli_fails_with(&["train", "--adapter-path", &run, "--iters", "1"], &refusal);
    let real = [
        "train",
        "--model",
        &model,
        "--data",
        &data_s,
        "--adapter-path",
        &run,
        "--iters",
        "1",
    ];
    cli_fails_with(&real, &refusal);
    // --overwrite with a bad option fails before anything is replaced.
    cli_fails_with(
        &[&real[..], &["--overwrite", "--lr-schedule", "linear"]].concat(),
        &["linear"],
    );
    cli_fails_with(
        &[
            "train",
            "--model",
            &model,
            "--data",
            "/nonexistent",
            "--adapter-path",
            &run,
            "--overwrite",
        ],
        &["/nonexistent"],
    );
    assert_eq!(
        snapshot(&run_dir),
        before,
        "the run's files must be untouched"
    );

    let args = [&real[..], &["--overwrite", "--steps-per-eval", "0"]].concat();
    let (ok, stdout, stderr) = run_cli(&args);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("--overwrite: replacing checkpoints/, metrics.jsonl, adapter_config.json, adapter_model.safetensors, loss.svg in"),
        "{stdout}"
    );
    assert!(!step.exists(), "the old checkpoints are replaced");
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().count(),
        1,
        "only the new run's step: {metrics}"
    );
    assert_eq!(
        std::fs::read(run_dir.join("notes.txt")).unwrap(),
        b"my notes"
    );
    std::fs::remove_dir_all(&root).ok();
}

// 2. merge never writes into the model or adapter it reads, however the path is spelled.
#[test]
fn merge_refuses_an_out_that_is_or_contains_its_inputs() {
    let root = temp_dir("safety-merge");
    let model = root.join("m");
    let adapter = root.join("a");
    copy_dir(&model_dir(), &model);
    copy_dir(&adapter_dir(), &adapter);
    std::os::unix::fs::symlink(&model, root.join("link")).unwrap();
    let existing = root.join("existing");
    std::fs::create_dir_all(&existing).unwrap();
    std::fs::write(existing.join("keep.txt"), "mine").unwrap();
    let before = snapshot(&root);
    let (m, a) = (s(&model), s(&adapter));
    let cases = [
        (format!("{}/./", m), "base model"),
        (format!("{}/../m", m), "base model"),
        (s(&root.join("link")), "base model"),
        (s(&root), "base model"),
        (a.clone(), "adapter"),
        (s(&existing), "not an empty directory"),
    ];
    for (out, why) in &cases {
        cli_fails_with(
            &["merge", "--model", &m, "--adapter", &a, "--out", out],
            &["--out", why],
        );
    }
    // Relative spellings too, from inside the folder.
    let (ok, _, stderr) = run_cli_in(
        &root,
        &["merge", "--model", "m", "--adapter", "a", "--out", "./m"],
    );
    assert!(
        !ok && stderr.contains("is or contains the base model"),
        "{stderr}"
    );
    assert_eq!(snapshot(&root), before, "no input may change");

    // A good merge appears whole under its name and leaves no temporary behind.
    let merged = root.join("merged");
    let (ok, stdout, stderr) = run_cli(&[
        "merge",
        "--model",
        &m,
        "--adapter",
        &a,
        "--out",
        &s(&merged),
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(merged.join("model.safetensors").is_file() && merged.join("config.json").is_file());
    let names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("tmp")), "{names:?}");
    std::fs::remove_dir_all(&root).ok();
}

// 3. Atomic writes from many threads of one process never share a temporary.
#[test]
fn concurrent_atomic_writes_do_not_collide() {
    let dir = temp_dir("safety-atomic");
    let path = dir.join("file.json");
    let contents: Vec<Vec<u8>> = (0..8)
        .map(|i| vec![b'a' + i as u8; 4096 * (i + 1)])
        .collect();
    std::thread::scope(|scope| {
        for c in &contents {
            let path = &path;
            scope.spawn(move || {
                for _ in 0..25 {
                    write_atomically(path, c).unwrap();
                }
            });
        }
    });
    let last = std::fs::read(&path).unwrap();
    assert!(contents.contains(&last), "the file is one whole write");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(left.len(), 1, "no temporary is left behind");
    std::fs::remove_dir_all(&dir).ok();
}

// 4. An adapter's tensors must have the rank its config gives, and the
//    config's values their types.
#[test]
fn adapter_rank_and_config_types_are_checked() {
    let dir = adapter_with(
        "safety-rank",
        |c| {
            c.insert("r".into(), 8.into());
        },
        |_| true,
    );
    one_line_error(
        AdapterWeights::load(&dir),
        &[
            "adapter_model.safetensors",
            "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight is [4, 160]",
            "lora_B.weight is [64, 4]",
            "r = 8",
        ],
    );
    let pattern = adapter_with(
        "safety-rank-pattern",
        |c| {
            c.insert("rank_pattern".into(), serde_json::json!({"q_proj": 2}));
        },
        |_| true,
    );
    one_line_error(
        AdapterWeights::load(&pattern),
        &["q_proj", "[4, 64]", "r = 2"],
    );
    for (field, value) in [
        ("lora_alpha", Value::from("16")),
        ("use_rslora", Value::from("yes")),
        ("r", Value::from(-4)),
        ("use_dora", Value::from(1)),
    ] {
        let dir = adapter_with(
            "safety-types",
            |c| {
                c.insert(field.into(), value);
            },
            |_| true,
        );
        one_line_error(
            AdapterWeights::load(&dir),
            &["adapter_config.json", &format!("field {field}")],
        );
    }
    let dir = adapter_with(
        "safety-alpha",
        |c| {
            c.insert("lora_alpha".into(), 1e39.into());
        },
        |_| true,
    );
    one_line_error(
        AdapterWeights::load(&dir),
        &["lora_alpha", "not a finite number"],
    );
    let eval = s(&fixture("data/eval.jsonl"));
    let dir = adapter_with(
        "safety-rank-cli",
        |c| {
            c.insert("r".into(), 16.into());
        },
        |_| true,
    );
    cli_fails_with(
        &[
            "eval",
            "--model",
            &s(&model_dir()),
            "--adapter",
            &s(&dir),
            "--data",
            &eval,
        ],
        &["r = 16", "(rank 4)"],
    );
}

// 5. The config decides which modules are adapted, as in PEFT.
#[test]
fn target_modules_decide_what_is_adapted() {
    let gpu = gpu();
    let attach = |dir: &Path| -> dora_wgpu::Result<()> {
        let mut model = Llama::load(gpu, &model_dir())?;
        model.attach_adapter(&AdapterWeights::load(dir)?)
    };
    let nope = adapter_with(
        "safety-nope",
        |c| {
            c.insert("target_modules".into(), serde_json::json!(["nope_proj"]));
        },
        |_| true,
    );
    one_line_error(
        attach(&nope),
        &[
            "\"nope_proj\"",
            "matches none",
            "k_proj, o_proj, q_proj, v_proj",
        ],
    );
    let only_q = adapter_with(
        "safety-only-q",
        |c| {
            c.insert("target_modules".into(), serde_json::json!(["q_proj"]));
        },
        |_| true,
    );
    one_line_error(
        attach(&only_q),
        &[
            "tensors for model.layers.0.mlp.down_proj",
            "config does not select",
            "target_modules [\"q_proj\"]",
        ],
    );
    let missing = adapter_with(
        "safety-missing",
        |_| {},
        |k| !k.contains("layers.1.mlp.up_proj"),
    );
    one_line_error(
        attach(&missing),
        &["selects model.layers.1.mlp.up_proj", "no tensors for it"],
    );
    let layers = adapter_with(
        "safety-layers",
        |c| {
            c.insert("layers_to_transform".into(), serde_json::json!([1]));
        },
        |_| true,
    );
    one_line_error(
        attach(&layers),
        &[
            "model.layers.0.",
            "does not select",
            "layers_to_transform [1]",
        ],
    );
    // What PEFT accepts loads: a full-match regex, and layers_to_transform
    // over exactly the layers that have tensors.
    let regex = adapter_with(
        "safety-regex",
        |c| {
            c.insert("target_modules".into(), r".*\.(q|v)_proj".into());
        },
        |k| k.contains("q_proj") || k.contains("v_proj"),
    );
    attach(&regex).unwrap();
    let layer1 = adapter_with(
        "safety-layer1",
        |c| {
            c.insert("layers_to_transform".into(), serde_json::json!([1]));
        },
        |k| k.contains("layers.1."),
    );
    attach(&layer1).unwrap();
    let excluded = adapter_with(
        "safety-exclude",
        |c| {
            c.insert("exclude_modules".into(), serde_json::json!(["down_proj"]));
        },
        |k| !k.contains("down_proj"),
    );
    attach(&excluded).unwrap();
}

// 6. NaN or infinite weights are refused at load, naming the tensor; a
//    loss that is not finite fails the evaluation.
#[test]
fn non_finite_weights_and_losses_are_errors() {
    let gpu = gpu();
    let (root, model) = scratch_model("safety-nan");
    let path = model.join("model.safetensors");
    let mut tensors = read_safetensors(&path).unwrap();
    let name = "model.layers.1.mlp.up_proj.weight";
    let mut values = tensors[name].to_f32();
    values[17] = f32::NAN;
    let shape = tensors[name].shape.clone();
    tensors.insert(name.into(), HostTensor::from_f32(&values, &shape));
    write_safetensors(&path, &tensors, None).unwrap();
    one_line_error(
        Llama::load(gpu, &model),
        &[name, "non-finite", "element 17"],
    );
    let eval = s(&fixture("data/eval.jsonl"));
    cli_fails_with(
        &["eval", "--model", &s(&model), "--data", &eval],
        &[name, "non-finite"],
    );

    // Finite but huge magnitudes overflow the forward pass: eval must not print a loss.
    let huge = root.join("huge");
    copy_dir(&adapter_dir(), &huge);
    let apath = huge.join("adapter_model.safetensors");
    let mut a = read_safetensors(&apath).unwrap();
    for (k, t) in a.iter_mut() {
        if k.ends_with("lora_magnitude_vector") {
            *t = HostTensor::from_f32(&vec![3e38; t.numel()], &t.shape);
        }
    }
    write_safetensors(&apath, &a, None).unwrap();
    cli_fails_with(
        &[
            "eval",
            "--model",
            &s(&model_dir()),
            "--adapter",
            &s(&huge),
            "--data",
            &eval,
        ],
        &["loss is not finite"],
    );
    // No scorable token: an error, not a NaN.
    let base = Llama::load(gpu, &model_dir()).unwrap();
    let one_token = Example {
        ids: vec![5],
        scored: vec![false],
    };
    one_line_error(
        tasks::evaluate(&base, &[one_token]),
        &["no example has a token to score"],
    );
    std::fs::remove_dir_all(&root).ok();
}

// 7. Token ids past the model's vocabulary are refused on the host, naming the token.
#[test]
fn token_ids_outside_the_vocabulary_are_refused() {
    let (root, model) = scratch_model("safety-vocab");
    // A special token added after the model's 384 embedding rows.
    edit_json(&model.join("tokenizer.json"), |t| {
        t["added_tokens"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "id": 384, "content": "<|extra|>", "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            }));
    });
    let tokenizer = Tokenizer::from_dir(&model).unwrap();
    assert_eq!(tokenizer.encode("<|extra|>", false).unwrap(), vec![384]);
    let data = data_dir_with(
        &root,
        "{\"text\": \"the hen\"}\n{\"text\": \"a <|extra|> token\"}\n",
    );
    let file = s(&data.join("train.jsonl"));
    let needles = [
        "train.jsonl",
        "example 2",
        "\"<|extra|>\" (id 384)",
        "vocab_size 384",
    ];
    cli_fails_with(&["eval", "--model", &s(&model), "--data", &file], &needles);
    cli_fails_with(
        &[
            "train",
            "--model",
            &s(&model),
            "--data",
            &s(&data),
            "--adapter-path",
            &s(&root.join("run")),
        ],
        &needles,
    );
    assert!(!root.join("run").exists(), "nothing written");
    cli_fails_with(
        &[
            "generate",
            "--model",
            &s(&model),
            "--prompt",
            "say <|extra|>",
        ],
        &["\"<|extra|>\" (id 384)"],
    );
    // The library's own check, for callers that build examples themselves.
    let gpu = gpu();
    let base = Llama::load(gpu, &model).unwrap();
    let examples = read_jsonl(&data.join("train.jsonl"), &tokenizer).unwrap();
    one_line_error(
        tasks::evaluate(&base, &examples),
        &["example 2", "token id 384", "vocab_size 384"],
    );
    std::fs::remove_dir_all(&root).ok();
}

// 8. Out-of-range settings are refused with the field and its value.
#[test]
fn impossible_sizes_and_constants_are_refused() {
    let cases: [(&str, Value, &str); 11] = [
        (
            "final_logit_softcapping",
            30.0.into(),
            "final_logit_softcapping 30 is read for gemma3_text only",
        ),
        (
            "attn_logit_softcapping",
            50.0.into(),
            "attn_logit_softcapping 50 is not supported",
        ),
        (
            "rope_theta",
            0.0.into(),
            "rope_theta 0 must be a positive number",
        ),
        (
            "rope_theta",
            (-10000.0).into(),
            "rope_theta -10000 must be a positive number",
        ),
        (
            "rms_norm_eps",
            0.0.into(),
            "rms_norm_eps 0 must be a positive number",
        ),
        (
            "rms_norm_eps",
            (-1e-5).into(),
            "rms_norm_eps -0.00001 must be a positive number",
        ),
        ("head_dim", 15.into(), "head_dim 15 is odd"),
        (
            "num_key_value_heads",
            3.into(),
            "num_attention_heads 4 is not a multiple of num_key_value_heads 3",
        ),
        ("hidden_size", 0.into(), "hidden_size 0 is out of range"),
        ("rope_theta", "big".into(), "field rope_theta: invalid type"),
        (
            "num_hidden_layers",
            (-2).into(),
            "field num_hidden_layers: invalid value",
        ),
    ];
    for (field, value, want) in cases {
        let dir = model_with_config("safety-config", |c| {
            c.remove("rope_parameters");
            c.insert(field.into(), value);
        });
        one_line_error(ModelConfig::load(&dir), &["config.json", want]);
    }
    let dir = model_with_config("safety-heads", |c| {
        c.remove("head_dim");
        c.insert("num_attention_heads".into(), 6.into());
        c.insert("num_key_value_heads".into(), 6.into());
    });
    one_line_error(
        ModelConfig::load(&dir),
        &["hidden_size 64 is not divisible by num_attention_heads 6"],
    );

    let root = temp_dir("safety-layers");
    let data = data_dir_with(
        &root,
        &std::fs::read_to_string(fixture("data/eval.jsonl")).unwrap(),
    );
    cli_fails_with(
        &[
            "train",
            "--model",
            &s(&model_dir()),
            "--data",
            &s(&data),
            "--num-layers",
            "99",
            "--adapter-path",
            &s(&root.join("run")),
        ],
        &["--num-layers 99 exceeds the model's 2 layers"],
    );
    std::fs::remove_dir_all(&root).ok();
}

// 9. Chat masking refuses a template whose partial renders are not prefixes
//    of the whole conversation, instead of masking the wrong tokens.
#[test]
fn unstable_chat_templates_are_refused() {
    let (root, model) = scratch_model("safety-chat");
    // Earlier assistant turns lose their text once a later turn follows (as
    // templates that drop earlier reasoning do).
    edit_json(&model.join("tokenizer_config.json"), |c| {
        c.insert(
            "chat_template".into(),
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' and not loop.last %}(earlier){% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}".into(),
        );
    });
    let tokenizer = Tokenizer::from_dir(&model).unwrap();
    let path = root.join("chat.jsonl");
    let chat = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}, {"role": "user", "content": "and?"}, {"role": "assistant", "content": "more"}]}"#;
    std::fs::write(&path, format!("{chat}\n")).unwrap();
    one_line_error(
        read_jsonl(&path, &tokenizer),
        &[
            "chat.jsonl:1",
            "message 2 (assistant)",
            "renders",
            "prompt/completion",
        ],
    );
    // The stable template of the fixture masks each assistant turn exactly.
    let stable = Tokenizer::from_dir(model_dir()).unwrap();
    let ex = &read_jsonl(&path, &stable).unwrap()[0];
    let scored: Vec<u32> = ex
        .ids
        .iter()
        .zip(&ex.scored)
        .filter(|(_, &s)| s)
        .map(|(&i, _)| i)
        .collect();
    let answer = |text: &str| {
        stable
            .encode(&format!("{text}<|im_end|>\n"), false)
            .unwrap()
    };
    assert_eq!(scored, [answer("hello there"), answer("more")].concat());
    std::fs::remove_dir_all(&root).ok();
}

// 10. A config that does not fit its weights is one error before any allocation.
#[test]
fn configs_that_do_not_fit_the_weights_fail_before_allocating() {
    let gpu = gpu();
    let cases: [(&str, Value, &[&str]); 4] = [
        (
            "num_hidden_layers",
            1_000_000_000.into(),
            &["num_hidden_layers is 1000000000 but the weights hold 2 layers"],
        ),
        (
            "vocab_size",
            1_000_000_000.into(),
            &[
                "model.embed_tokens.weight of shape [1000000000, 64]",
                "[384, 64]",
            ],
        ),
        (
            "intermediate_size",
            2_000_000_000.into(),
            &["model.layers.0.mlp.gate_proj.weight", "[2000000000, 64]"],
        ),
        (
            "num_hidden_layers",
            3.into(),
            &["num_hidden_layers is 3 but the weights hold 2 layers"],
        ),
    ];
    for (field, value, needles) in cases {
        let dir = model_with_config("safety-huge", |c| {
            c.insert(field.into(), value);
        });
        one_line_error(Llama::load(gpu, &dir), needles);
        cli_fails_with(
            &[
                "analyze",
                "--base",
                &s(&dir),
                "--adapter",
                &s(&adapter_dir()),
                "--json",
                "/dev/null",
            ],
            needles,
        );
    }
}

// 11. A panic is reported as a bug with its source location; arguments that
//     are not UTF-8 are a user error, not a panic.
#[test]
fn panics_keep_their_location_and_bad_arguments_do_not_panic() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = seen.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        *sink.lock().unwrap() = dora_wgpu::describe_panic(info);
    }));
    let line = line!() + 1;
    let caught = std::panic::catch_unwind(|| panic!("index out of range\nsecond line"));
    std::panic::set_hook(previous);
    assert!(caught.is_err());
    let message = seen.lock().unwrap().clone();
    let at =
        format!("internal error (a bug in dora-wgpu; please report it) at tests/safety.rs:{line}:");
    assert!(message.starts_with(&at), "{message}");
    assert!(
        message.ends_with(": index out of range"),
        "only the first line: {message}"
    );
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"--model=\xff");
    cli_fails_with(&[std::ffi::OsStr::new("eval"), bad], &["not valid UTF-8"]);
}
