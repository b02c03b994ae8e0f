//! Fuzz-style robustness of every loader on user files: a few hundred seeded
//! mutations of the tiny model directory, its DoRA adapter and a data file
//! (byte flips in safetensors headers and bodies, config fields set to zero,
//! negative, huge or wrongly typed values, truncated files, non-UTF-8 and
//! malformed JSONL) go through the loaders in-process. Each case must end in
//! an `Err` of one line, or in a model that evaluates to a finite loss; none
//! may panic. The counts are printed (`cargo test --test fuzz -- --nocapture`).

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use common::*;
use dora_wgpu::io::AdapterWeights;
use dora_wgpu::nn::{Llama, Rng};
use dora_wgpu::text::data::{read_jsonl, Example};
use dora_wgpu::{tasks, Result, Tokenizer};
use serde_json::Value;

#[derive(Default)]
struct Tally {
    cases: usize,
    errors: usize,
    successes: usize,
    /// Cases that panicked or gave a multi-line error, with what happened.
    failures: Vec<String>,
}

impl Tally {
    /// Runs one case; anything but `Ok` or a one-line `Err` is a failure.
    fn case(&mut self, label: &str, f: impl FnOnce() -> Result<()>) {
        self.cases += 1;
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(Ok(())) => self.successes += 1,
            Ok(Err(e)) => {
                let message = e.to_string();
                if message.lines().count() == 1 && !message.trim().is_empty() {
                    self.errors += 1;
                } else {
                    self.failures
                        .push(format!("{label}: error not one line: {message:?}"));
                }
            }
            Err(payload) => {
                let what = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                self.failures.push(format!("{label}: panicked: {what}"));
            }
        }
    }
}

/// The first few examples of the evaluation fixture (all three line formats).
fn examples(tokenizer: &Tokenizer) -> Vec<Example> {
    let mut all = read_jsonl(&fixture("data/eval.jsonl"), tokenizer).unwrap();
    all.truncate(3);
    all
}

/// A loaded model must evaluate to a finite loss, or fail saying why.
fn evaluate(model: &Llama, examples: &[Example]) -> Result<()> {
    let report = tasks::evaluate(model, examples)?;
    assert!(
        report.loss.is_finite(),
        "evaluate returned a non-finite loss"
    );
    Ok(())
}

/// A fresh copy of `src` under `root`, named `name`.
fn fresh_copy(src: &Path, root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(src, &dir);
    dir
}

/// Byte-level mutations of one file's bytes: flips inside `range`, or a truncation.
fn flip_bytes(bytes: &[u8], rng: &mut Rng, range: std::ops::Range<usize>) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let flips = 1 + rng.next_u64() as usize % 4;
    for _ in 0..flips {
        let at = range.start + rng.next_u64() as usize % (range.end - range.start);
        out[at] ^= 1 << (rng.next_u64() % 8);
    }
    out
}

fn truncate(bytes: &[u8], rng: &mut Rng) -> Vec<u8> {
    bytes[..rng.next_u64() as usize % bytes.len()].to_vec()
}

/// The safetensors header's extent: 8 length bytes plus the JSON.
fn header_end(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

/// Values a config field should never hold, and some it may.
fn odd_values() -> Vec<Value> {
    serde_json::from_str(
        r#"[0, -1, 3, 1000000000000, 1e300, -0.5, "x", null, [], {}, true, [1, -2], ".*"]"#,
    )
    .unwrap()
}

/// Each field of a JSON file set to each odd value, and removed.
fn json_field_cases(path: &Path, fields: &[&str]) -> Vec<(String, Vec<u8>)> {
    let original: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for field in fields {
        let mut removed = original.clone();
        removed.as_object_mut().unwrap().remove(*field);
        out.push((
            format!("{field} removed"),
            serde_json::to_vec(&removed).unwrap(),
        ));
        for v in odd_values() {
            let mut edited = original.clone();
            edited[*field] = v.clone();
            out.push((
                format!("{field} = {v}"),
                serde_json::to_vec(&edited).unwrap(),
            ));
        }
    }
    out
}

/// Whole-file damage for a JSON file: truncations and bytes that are not UTF-8.
fn json_file_cases(path: &Path, rng: &mut Rng) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    for i in 0..4 {
        out.push((format!("truncated {i}"), truncate(&bytes, rng)));
    }
    let mut not_utf8 = bytes.clone();
    not_utf8.insert(bytes.len() / 2, 0xff);
    out.push(("non-UTF-8".into(), not_utf8));
    out
}

#[test]
fn loaders_survive_mutated_files() {
    let gpu = gpu();
    let root = temp_dir("fuzz");
    let mut rng = Rng::new(14);
    let mut tally = Tally::default();
    let model_src = fixture("models/tiny-llama");
    let adapter_src = fixture("models/tiny-llama-dora");
    let tokenizer = Tokenizer::from_dir(&model_src).unwrap();
    let examples = examples(&tokenizer);
    let base = Llama::load(gpu, &model_src).unwrap();

    // The model directory: weights, config, tokenizer.
    let weights = std::fs::read(model_src.join("model.safetensors")).unwrap();
    let end = header_end(&weights);
    let mut weight_cases = Vec::new();
    for i in 0..70 {
        weight_cases.push((
            format!("header flip {i}"),
            flip_bytes(&weights, &mut rng, 0..end),
        ));
    }
    for i in 0..40 {
        let body = flip_bytes(&weights, &mut rng, end..weights.len());
        weight_cases.push((format!("body flip {i}"), body));
    }
    for i in 0..20 {
        weight_cases.push((format!("truncated {i}"), truncate(&weights, &mut rng)));
    }
    for (label, bytes) in weight_cases {
        let dir = fresh_copy(&model_src, &root, "model");
        std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
        tally.case(&format!("model.safetensors {label}"), || {
            evaluate(&Llama::load(gpu, &dir)?, &examples)
        });
    }
    let config = model_src.join("config.json");
    let fields = [
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "rms_norm_eps",
        "rope_parameters",
        "tie_word_embeddings",
        "max_position_embeddings",
        "eos_token_id",
    ];
    let config_cases = json_field_cases(&config, &fields)
        .into_iter()
        .chain(json_file_cases(&config, &mut rng));
    for (label, bytes) in config_cases {
        let dir = fresh_copy(&model_src, &root, "model");
        std::fs::write(dir.join("config.json"), bytes).unwrap();
        tally.case(&format!("config.json {label}"), || {
            evaluate(&Llama::load(gpu, &dir)?, &examples)
        });
    }
    let tokenizer_config = model_src.join("tokenizer_config.json");
    let tokenizer_cases = json_field_cases(
        &tokenizer_config,
        &["chat_template", "bos_token", "eos_token"],
    )
    .into_iter()
    .chain(json_file_cases(&tokenizer_config, &mut rng));
    for (label, bytes) in tokenizer_cases {
        let dir = fresh_copy(&model_src, &root, "model");
        std::fs::write(dir.join("tokenizer_config.json"), bytes).unwrap();
        tally.case(&format!("tokenizer_config.json {label}"), || {
            let t = Tokenizer::from_dir(&dir)?;
            evaluate(&base, &read_jsonl(&fixture("data/eval.jsonl"), &t)?)
        });
    }

    // The adapter: its config's fields and its tensors.
    let adapter_config = adapter_src.join("adapter_config.json");
    let fields = [
        "r",
        "lora_alpha",
        "use_dora",
        "use_rslora",
        "target_modules",
        "lora_dropout",
        "rank_pattern",
        "alpha_pattern",
        "layers_to_transform",
        "exclude_modules",
        "fan_in_fan_out",
        "bias",
        "peft_type",
    ];
    let mut adapter_cases: Vec<(String, &str, Vec<u8>)> =
        json_field_cases(&adapter_config, &fields)
            .into_iter()
            .chain(json_file_cases(&adapter_config, &mut rng))
            .map(|(label, bytes)| (label, "adapter_config.json", bytes))
            .collect();
    let tensors = std::fs::read(adapter_src.join("adapter_model.safetensors")).unwrap();
    let end = header_end(&tensors);
    for i in 0..40 {
        let bytes = flip_bytes(&tensors, &mut rng, 0..end);
        adapter_cases.push((
            format!("header flip {i}"),
            "adapter_model.safetensors",
            bytes,
        ));
    }
    for i in 0..20 {
        let bytes = flip_bytes(&tensors, &mut rng, end..tensors.len());
        adapter_cases.push((format!("body flip {i}"), "adapter_model.safetensors", bytes));
    }
    for i in 0..10 {
        let bytes = truncate(&tensors, &mut rng);
        adapter_cases.push((format!("truncated {i}"), "adapter_model.safetensors", bytes));
    }
    for (label, file, bytes) in adapter_cases {
        let dir = fresh_copy(&adapter_src, &root, "adapter");
        std::fs::write(dir.join(file), bytes).unwrap();
        tally.case(&format!("{file} {label}"), || {
            let mut model = Llama::load(gpu, &model_src)?;
            model.attach_adapter(&AdapterWeights::load(&dir)?)?;
            evaluate(&model, &examples)
        });
    }

    // A data file: byte flips, bytes that are not UTF-8, truncations, malformed lines.
    let data = std::fs::read(fixture("data/eval.jsonl")).unwrap();
    let mut data_cases = Vec::new();
    for i in 0..40 {
        data_cases.push((
            format!("flip {i}"),
            flip_bytes(&data, &mut rng, 0..data.len()),
        ));
    }
    for i in 0..10 {
        let mut bytes = data.clone();
        let at = rng.next_u64() as usize % data.len();
        bytes.insert(at, [0xff, 0xc3, 0x80, 0xfe][i % 4]);
        data_cases.push((format!("non-UTF-8 {i}"), bytes));
    }
    for i in 0..15 {
        data_cases.push((format!("truncated {i}"), truncate(&data, &mut rng)));
    }
    let malformed = [
        "{",
        "[]",
        "null",
        "42",
        r#"{"text": 5}"#,
        r#"{"text": ""}"#,
        r#"{"prompt": "a"}"#,
        r#"{"prompt": "a", "completion": null}"#,
        r#"{"messages": "x"}"#,
        r#"{"messages": []}"#,
        r#"{"messages": [{"role": 1, "content": "x"}]}"#,
        r#"{"messages": [{"role": "assistant", "content": "only me"}]}"#,
        r#"{"messages": [{"role": "user"}]}"#,
        r#"{"text": "a"} trailing"#,
        "\u{feff}{\"text\": \"byte order mark\"}",
    ];
    for (i, line) in malformed.iter().enumerate() {
        let mut bytes = data.clone();
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        data_cases.push((format!("malformed line {i}"), bytes));
    }
    for (label, bytes) in data_cases {
        let path = root.join("data.jsonl");
        std::fs::write(&path, bytes).unwrap();
        tally.case(&format!("data.jsonl {label}"), || {
            evaluate(&base, &read_jsonl(&path, &tokenizer)?)
        });
    }

    println!(
        "fuzz: {} cases, {} errors, {} successes, {} panics or bad errors",
        tally.cases,
        tally.errors,
        tally.successes,
        tally.failures.len()
    );
    std::fs::remove_dir_all(&root).ok();
    assert!(tally.cases >= 300, "a few hundred cases");
    assert!(
        tally.failures.is_empty(),
        "{} of {} cases failed:\n{}",
        tally.failures.len(),
        tally.cases,
        tally.failures.join("\n")
    );
}
