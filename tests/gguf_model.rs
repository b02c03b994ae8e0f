//! Models loaded from single GGUF files (tests/fixtures/gguf_model, written
//! by tools/gen_gguf_model_fixture.py): the tiny Llama (q/k rows permuted),
//! Qwen3 (q/k norms, head_dim ≠ hidden/heads) and Gemma 3 (norms stored as
//! 1 + w, sliding windows, linear rope scaling) with their weights in Q8_0,
//! Q4_0, Q4_1, Q5_0, Q5_1, F16, BF16 and F32; logits against transformers
//! on the weights gguf-py decodes (for the llama file, transformers'
//! own GGUF loader gives the same), the tokenizer from the same file, and
//! the commands taking `--model FILE.gguf`.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use dora_wgpu::io::gguf::{blocks, GgmlType, GgufFile};
use dora_wgpu::io::hf::{load_weights, ModelConfig};
use dora_wgpu::io::read_safetensors;
use dora_wgpu::nn::Llama;
use dora_wgpu::text::Tokenizer;
use dora_wgpu::{no_grad, Tensor};
use serde_json::Value;

const FILES: [&str; 3] = ["tiny-llama.gguf", "tiny-qwen3.gguf", "tiny-gemma3.gguf"];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf_model")
}

/// A path as a command-line argument (the test paths are UTF-8).
fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// `merge --model M --adapter A --out OUT` plus `extra`.
fn merge_args(model: &Path, adapter: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "merge",
        "--model",
        &s(model),
        "--adapter",
        &s(adapter),
        "--out",
        &s(out),
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn merge_cli(model: &Path, adapter: &Path, out: &Path, extra: &[&str]) -> (bool, String, String) {
    run_cli(&merge_args(model, adapter, out, extra))
}

fn merge_fails_with(model: &Path, adapter: &Path, out: &Path, needles: &[&str]) {
    cli_fails_with(&merge_args(model, adapter, out, &[]), needles)
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("expected.json")).unwrap()).unwrap()
}

#[test]
fn logits_match_transformers_on_the_decoded_weights() {
    let want = read_safetensors(&dir().join("expected.safetensors")).unwrap();
    let meta = expected();
    for name in FILES {
        let ids: Vec<i32> = meta[name]["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap() as i32)
            .collect();
        let m = Llama::load(gpu(), &dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let _g = no_grad();
        let t = Tensor::from_i32(gpu(), &ids, &[1, ids.len()]).unwrap();
        let logits = m.logits(&m.forward_hidden(&t, None).unwrap()).unwrap();
        assert_eq!(logits.shape(), &[1, ids.len(), m.config.vocab_size]);
        let e = rel_err(&logits.to_vec_f32().unwrap(), &want[name].to_f32());
        eprintln!("{name}: logits relative error {e:.2e}");
        assert!(e < 1e-4, "{name}: logits differ by {e:e}");
    }
}

#[test]
fn config_comes_from_the_metadata() {
    let llama = ModelConfig::load(&dir().join("tiny-llama.gguf")).unwrap();
    let from_dir = ModelConfig::load(&fixture("models/tiny-llama")).unwrap();
    // Everything the file states equals config.json's; eos comes from the tokenizer.
    assert_eq!(
        ModelConfig {
            eos_token_ids: from_dir.eos_token_ids.clone(),
            ..llama
        },
        from_dir
    );
    let qwen3 = ModelConfig::load(&dir().join("tiny-qwen3.gguf")).unwrap();
    assert_eq!((qwen3.head_dim, qwen3.qk_norm), (32, true));
    let gemma = ModelConfig::load(&dir().join("tiny-gemma3.gguf")).unwrap();
    let gemma_dir = ModelConfig::load(&fixture("models/tiny-gemma3")).unwrap();
    // llama.cpp's Gemma 3 layout, which the file cannot change: every sixth layer full.
    assert_eq!(gemma.sliding_windows, vec![Some(6); 3]);
    assert_eq!(gemma.rope, gemma_dir.rope);
    assert_eq!(gemma.sliding_rope, gemma_dir.sliding_rope);
    assert!(gemma.tie_word_embeddings && gemma.gemma_norms);
}

#[test]
fn decoded_weights_equal_gguf_py_up_to_the_undone_changes() {
    // Unquantized tensors come back bit for bit: the F32 token embedding of
    // no file here is quantized, so compare a norm (F32, gemma: minus one).
    let gguf = load_weights(&dir().join("tiny-gemma3.gguf")).unwrap();
    let st = load_weights(&fixture("models/tiny-gemma3")).unwrap();
    let name = "model.layers.0.input_layernorm.weight";
    let (a, b) = (gguf[name].to_f32(), st[name].to_f32());
    // (w + 1) - 1 in f32 is w up to one rounding of the sum.
    let e = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(e < 1e-6, "{name}: {e}");
    assert_eq!(
        gguf.keys().collect::<Vec<_>>(),
        st.keys()
            .filter(|k| *k != "lm_head.weight")
            .collect::<Vec<_>>()
    );
}

#[test]
fn tokenizer_comes_from_the_same_file() {
    let meta = expected();
    let r = &meta["tiny-llama.gguf"];
    let t = Tokenizer::load(dir().join("tiny-llama.gguf")).unwrap();
    let ids = t.encode(r["text"].as_str().unwrap(), true).unwrap();
    let want: Vec<u32> = r["text_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids, want);
}

#[test]
fn commands_take_a_gguf_file_as_the_model() {
    let model = dir().join("tiny-llama.gguf");
    let root = temp_dir("gguf-cli");
    let data = data_dir_with(
        &root,
        "{\"text\": \"the keeper asks, and the assistant answers\"}\n{\"text\": \"Hello world, the ships that sail\"}\n",
    );
    let (ok, out, err) = run_cli(&[
        "eval",
        "--model",
        &s(&model),
        "--data",
        &s(&data.join("train.jsonl")),
    ]);
    assert!(ok, "eval: {err}");
    assert!(out.contains("loss"), "{out}");
    let run = root.join("run");
    let (ok, _, err) = run_cli(&[
        "train",
        "--model",
        &s(&model),
        "--data",
        &s(&data),
        "--adapter-path",
        &s(&run),
        "--iters",
        "2",
        "--steps-per-eval",
        "2",
    ]);
    assert!(ok, "train: {err}");
    // Merged into a Hugging Face directory: config, tokenizer and weights
    // that give what the GGUF base with the adapter gives.
    let merged = root.join("merged");
    let (ok, _, err) = merge_cli(&model, &run, &merged, &[]);
    assert!(ok, "merge: {err}");
    let with_adapter = {
        let mut m = Llama::load(gpu(), &model).unwrap();
        m.attach_adapter(&dora_wgpu::io::AdapterWeights::load(&run).unwrap())
            .unwrap();
        m
    };
    let plain = Llama::load(gpu(), &merged).unwrap();
    let ids: Vec<i32> = vec![3, 14, 15, 92, 65, 35];
    let _g = no_grad();
    let t = Tensor::from_i32(gpu(), &ids, &[1, ids.len()]).unwrap();
    let logits = |m: &Llama| {
        m.logits(&m.forward_hidden(&t, None).unwrap())
            .unwrap()
            .to_vec_f32()
            .unwrap()
    };
    let e = rel_err(&logits(&plain), &logits(&with_adapter));
    // The merged weights are rounded to their stored dtype (F16 and BF16 here).
    assert!(e < 5e-3, "merged logits differ by {e:e}");
    merged_gguf_files_hold_the_merged_weights(&model, &run, &merged, &root);
    let text = "Hello world, the keeper asks.";
    assert_eq!(
        Tokenizer::load(&merged)
            .unwrap()
            .encode(text, true)
            .unwrap(),
        Tokenizer::load(&model).unwrap().encode(text, true).unwrap()
    );
    let (ok, out, err) = run_cli(&[
        "generate",
        "--model",
        &s(&model),
        "--prompt",
        "Hello",
        "--max-tokens",
        "3",
    ]);
    assert!(ok, "generate: {err}");
    assert!(!out.trim().is_empty(), "generate printed nothing: {err}");
}

#[test]
fn damaged_or_foreign_files_are_refused_naming_what_is_wrong() {
    let src = std::fs::read(dir().join("tiny-llama.gguf")).unwrap();
    let root = temp_dir("gguf-model-bad");
    // Another architecture: rename "llama" in general.architecture's value.
    let at = src
        .windows(b"general.architecture".len())
        .position(|w| w == b"general.architecture")
        .unwrap();
    let mut other = src.clone();
    // key, u32 type, u64 length, then the 5 bytes "llama".
    let value = at + b"general.architecture".len() + 4 + 8;
    assert_eq!(&other[value..value + 5], b"llama");
    other[value..value + 5].copy_from_slice(b"mamba");
    let path = root.join("mamba.gguf");
    std::fs::write(&path, &other).unwrap();
    one_line_error(
        ModelConfig::load(&path),
        &[
            "mamba.gguf",
            "general.architecture",
            "mamba",
            "not supported",
        ],
    );
    // A tensor name no transformers module has.
    let at = src
        .windows(b"blk.0.ffn_gate.weight".len())
        .position(|w| w == b"blk.0.ffn_gate.weight")
        .unwrap();
    let mut renamed = src.clone();
    renamed[at..at + 14].copy_from_slice(b"blk.0.ffn_gxte");
    let path = root.join("renamed.gguf");
    std::fs::write(&path, &renamed).unwrap();
    one_line_error(
        Llama::load(gpu(), &path).map(|_| ()),
        &["renamed.gguf", "blk.0.ffn_gxte.weight"],
    );
}

/// `merge --out FILE.gguf`: every tensor is the merged model's (the HF
/// directory `merged` holds them) within the written format's rounding, in
/// llama.cpp's layout (read back through the loader, which undoes it);
/// tensors not merged keep the base file's bytes with `same`.
fn merged_gguf_files_hold_the_merged_weights(model: &Path, run: &Path, merged: &Path, root: &Path) {
    let want = load_weights(merged).unwrap();
    // Bounds relative to a tensor's largest value: Q8_0 rounds to amax/254;
    // Q4_0 (in `same`) can clamp a value by amax/8.
    for (outtype, bound) in [("q8_0", 1.0 / 100.0), ("same", 1.0 / 7.0), ("f16", 1e-3)] {
        let out = root.join(format!("merged-{outtype}.gguf"));
        let (ok, stdout, err) = merge_cli(model, run, &out, &["--outtype", outtype]);
        assert!(ok, "merge --outtype {outtype}: {err}");
        assert!(stdout.contains("merged"), "{stdout}");
        let got = load_weights(&out).unwrap();
        for (name, t) in &got {
            let (a, b) = (t.to_f32(), want[name].to_f32());
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let e = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(
                e <= bound * scale + 1e-6,
                "{outtype}: {name} differs by {e} (largest value {scale})"
            );
        }
        let (base, written) = (
            GgufFile::open(model).unwrap(),
            GgufFile::open(&out).unwrap(),
        );
        let keys = |f: &GgufFile| {
            let mut k: Vec<String> = f.metadata.keys().cloned().collect();
            k.retain(|k| k != "general.file_type");
            k
        };
        assert_eq!(keys(&written), keys(&base), "{outtype}: metadata keys");
        assert_eq!(
            written.get("tokenizer.ggml.tokens"),
            base.get("tokenizer.ggml.tokens")
        );
        if outtype == "same" {
            for name in ["token_embd.weight", "blk.0.attn_norm.weight"] {
                assert_eq!(
                    written.tensor_bytes(name).unwrap().1,
                    base.tensor_bytes(name).unwrap().1,
                    "{name} should be copied as stored"
                );
            }
        }
    }
    // Nothing replaced, nothing from a directory base.
    let existing = root.join("merged-same.gguf");
    let before = std::fs::read(&existing).unwrap();
    merge_fails_with(model, run, &existing, &["already exists"]);
    assert_eq!(std::fs::read(&existing).unwrap(), before);
    merge_fails_with(merged, run, &root.join("from-dir.gguf"), &["GGUF --model"]);
    assert!(!root.join("from-dir.gguf").exists());
}

#[test]
fn quantizers_write_gguf_py_bytes() {
    let f = GgufFile::open(&dir().join("quantize.gguf")).unwrap();
    for kind in [
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
    ] {
        let (_, source) = f.tensor_f32(&format!("{}.source", kind.name())).unwrap();
        let (_, want) = f.tensor_bytes(&format!("{}.q", kind.name())).unwrap();
        let got = blocks::quantize(kind, &source).unwrap();
        assert!(got == want, "{}: bytes differ from gguf-py's", kind.name());
    }
}

/// `tiny-gemma3.gguf` rewritten with one metadata key added (tensors copied).
fn gemma3_gguf_with(root: &Path, key: &str, value: f32) -> PathBuf {
    use dora_wgpu::io::gguf::{write_gguf, OutTensor, Value as Meta};
    let src = GgufFile::open(&dir().join("tiny-gemma3.gguf")).unwrap();
    let mut metadata = src.metadata.clone();
    metadata.insert(key.into(), Meta::F32(value));
    let tensors: Vec<OutTensor> = src
        .tensors
        .iter()
        .map(|t| OutTensor {
            name: t.name.clone(),
            kind: t.kind.unwrap(),
            shape: t.shape.clone(),
        })
        .collect();
    let path = root.join(format!("{key}.gguf"));
    write_gguf(&path, &metadata, &tensors, |_, t| {
        Ok(src.tensor_bytes(&t.name)?.1.to_vec())
    })
    .unwrap();
    path
}

/// llama.cpp's soft-capping keys go through config.json's rules: the final
/// cap is read (and applied to the logits), the attention cap is refused.
#[test]
fn soft_capping_keys_in_the_metadata_are_read_or_refused() {
    let root = temp_dir("gguf-softcap");
    let plain = Llama::load(gpu(), &dir().join("tiny-gemma3.gguf")).unwrap();
    assert_eq!(plain.config.final_logit_softcapping, None);
    let capped_path = gemma3_gguf_with(&root, "gemma3.final_logit_softcapping", 2.0);
    let capped = Llama::load(gpu(), &capped_path).unwrap();
    assert_eq!(capped.config.final_logit_softcapping, Some(2.0));
    let _g = no_grad();
    let ids = Tensor::from_i32(gpu(), &[5, 9, 17, 33], &[1, 4]).unwrap();
    let logits = |m: &Llama| {
        m.logits(&m.forward_hidden(&ids, None).unwrap())
            .unwrap()
            .to_vec_f32()
            .unwrap()
    };
    let (raw, got) = (logits(&plain), logits(&capped));
    assert!(raw.iter().any(|x| x.abs() > 2.0), "the cap must bite");
    for (r, g) in raw.iter().zip(&got) {
        let want = 2.0 * (*r as f64 / 2.0).tanh();
        assert!((*g as f64 - want).abs() < 1e-5, "{g} vs {want}");
    }
    one_line_error(
        ModelConfig::load(&gemma3_gguf_with(
            &root,
            "gemma3.attn_logit_softcapping",
            50.0,
        )),
        &["attn_logit_softcapping", "not supported"],
    );
    std::fs::remove_dir_all(&root).unwrap();
}
