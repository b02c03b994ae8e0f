//! Multimodal Gemma 3 checkpoints (`model_type: "gemma3"`,
//! Gemma3ForConditionalGeneration) against transformers and PEFT
//! (tests/fixtures/models/tiny-gemma3-mm*, gemma3_mm.json, written by
//! tools/gen_gemma3_mm_fixture.py): the config nested in `text_config`, both
//! stored key layouts, the adapter keys and `target_modules` our trainer
//! writes, the refusal of adapters on the vision tower, and `merge`, which
//! must leave the vision tower and projector as they were. Logits, eval loss,
//! generation and merged weights are in tests/llama.rs with the other families.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use dora_wgpu::io::hf::{ModelConfig, RopeScaling, GEMMA3_LANGUAGE_MODEL};
use dora_wgpu::io::{read_safetensors, write_safetensors, AdapterWeights, HostTensor};
use dora_wgpu::nn::Llama;
use dora_wgpu::{no_grad, DType, Tensor};
use serde_json::Value;

const NAME: &str = "tiny-gemma3-mm";

fn models_dir() -> PathBuf {
    fixture("models")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(models_dir().join("gemma3_mm.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn tensors() -> BTreeMap<String, HostTensor> {
    read_safetensors(&models_dir().join("gemma3_mm.safetensors")).unwrap()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Logits of `m` for the reference ids.
fn logits(m: &Llama, ids: &[i32]) -> Vec<f32> {
    let _g = no_grad();
    let t = Tensor::from_i32(gpu(), ids, &[1, ids.len()]).unwrap();
    m.logits(&m.forward_hidden(&t, None).unwrap())
        .unwrap()
        .to_vec_f32()
        .unwrap()
}

fn reference_ids(r: &Value) -> Vec<i32> {
    r["logits"][NAME]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap() as i32)
        .collect()
}

/// A copy of the fixture whose weights are stored under transformers'
/// in-memory names (`save_pretrained(save_original_format=False)`, and
/// checkpoints saved by transformers 4.52 to 4.57), renamed as gemma3_mm.json
/// records transformers doing it.
fn copy_in_memory_layout(r: &Value, name: &str) -> PathBuf {
    let dir = temp_dir(name);
    copy_dir(&models_dir().join(NAME), &dir);
    let layouts = r["models"][NAME]["key_layouts"].as_object().unwrap();
    let stored = read_safetensors(&dir.join("model.safetensors")).unwrap();
    assert_eq!(stored.len(), layouts.len());
    let renamed: BTreeMap<String, HostTensor> = stored
        .into_iter()
        .map(|(k, t)| (layouts[&k].as_str().unwrap().to_string(), t))
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &renamed, None).unwrap();
    dir
}

/// The 4B's sparse `text_config` gets Gemma3TextConfig's defaults, as
/// transformers gives them (gemma3_mm.json's sparse_config).
#[test]
fn text_config_takes_gemma3_text_defaults_as_transformers() {
    let r = reference();
    let sparse = &r["sparse_config"];
    let want = &sparse["text_config"];
    let dir = temp_dir("gemma3-mm-sparse");
    std::fs::write(dir.join("config.json"), sparse["config_json"].to_string()).unwrap();
    let c = ModelConfig::load(&dir).unwrap();
    let n = |k: &str| want[k].as_u64().unwrap() as usize;
    assert_eq!(c.model_type, "gemma3");
    assert_eq!(c.decoder_prefix, GEMMA3_LANGUAGE_MODEL);
    assert_eq!(
        (
            c.vocab_size,
            c.hidden_size,
            c.intermediate_size,
            c.num_hidden_layers
        ),
        (
            n("vocab_size"),
            n("hidden_size"),
            n("intermediate_size"),
            n("num_hidden_layers")
        )
    );
    assert_eq!(
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
        (
            n("num_attention_heads"),
            n("num_key_value_heads"),
            n("head_dim")
        )
    );
    assert_eq!(c.max_position_embeddings, n("max_position_embeddings"));
    assert_eq!(
        c.rms_norm_eps as f64,
        want["rms_norm_eps"].as_f64().unwrap() as f32 as f64
    );
    let scalar = want["query_pre_attn_scalar"].as_f64().unwrap();
    assert_eq!(c.attention_scale, (1.0 / scalar.sqrt()) as f32);
    let window = n("sliding_window");
    let windows: Vec<Option<usize>> = want["layer_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t == "sliding_attention").then_some(window))
        .collect();
    assert_eq!(c.sliding_windows, windows);
    let rope = &want["rope_parameters"];
    let full = &rope["full_attention"];
    assert_eq!(full["rope_type"], "linear");
    assert_eq!(c.rope.theta, full["rope_theta"].as_f64().unwrap());
    assert_eq!(
        c.rope.scaling,
        RopeScaling::Linear {
            factor: full["factor"].as_f64().unwrap()
        }
    );
    let sliding = c.sliding_rope.as_ref().unwrap();
    assert_eq!(
        sliding.theta,
        rope["sliding_attention"]["rope_theta"].as_f64().unwrap()
    );
    assert_eq!(sliding.scaling, RopeScaling::Default);
    assert_eq!(want["hidden_activation"], "gelu_pytorch_tanh");
    assert_eq!(c.activation, dora_wgpu::io::hf::Activation::GeluTanh);
    assert!(want["tie_word_embeddings"].as_bool().unwrap() && c.tie_word_embeddings);
    assert!(want["final_logit_softcapping"].is_null() && c.final_logit_softcapping.is_none());
    // The top level's eos_token_id wins over text_config's default (1).
    assert_eq!(want["eos_token_id"], 1);
    assert_eq!(c.eos_token_ids, vec![1, 106]);

    // The fixture's config: tiny-gemma3's, nested.
    let mm = ModelConfig::load(&models_dir().join(NAME)).unwrap();
    let text = ModelConfig::load(&models_dir().join("tiny-gemma3")).unwrap();
    assert_eq!(
        ModelConfig {
            model_type: text.model_type.clone(),
            decoder_prefix: text.decoder_prefix,
            ..mm
        },
        text
    );

    // Errors name the nested field.
    let mut broken = sparse["config_json"].clone();
    broken["text_config"]["num_key_value_heads"] = 3.into();
    std::fs::write(dir.join("config.json"), broken.to_string()).unwrap();
    one_line_error(
        ModelConfig::load(&dir),
        &[
            "config.json",
            "text_config",
            "num_attention_heads 8 is not a multiple of num_key_value_heads 3",
        ],
    );
    broken["text_config"] = serde_json::json!({"model_type": "llama"});
    std::fs::write(dir.join("config.json"), broken.to_string()).unwrap();
    one_line_error(
        ModelConfig::load(&dir),
        &["config.json", "text_config.model_type \"llama\""],
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The hub layout (`language_model.model.…`, what the fixture and Google's
/// checkpoints store) and transformers' in-memory names
/// (`model.language_model.…`) load to the same model.
#[test]
fn both_stored_key_layouts_load_to_transformers_logits() {
    let r = reference();
    let t = tensors();
    let ids = reference_ids(&r);
    let hub = Llama::load(gpu(), &models_dir().join(NAME)).unwrap();
    let stored: Vec<String> = r["models"][NAME]["weights"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert!(stored
        .iter()
        .all(|k| !k.starts_with("model.") && !k.starts_with("lm_head")));
    let dir = copy_in_memory_layout(&r, "gemma3-mm-new-layout");
    let new = Llama::load(gpu(), &dir).unwrap();
    let want = t["logits.tiny-gemma3-mm.none"].to_f32();
    let (a, b) = (logits(&hub, &ids), logits(&new, &ids));
    assert_eq!(a, b, "same weights, same logits");
    let e = rel_err(&a, &want);
    eprintln!("logits relative error {e:.2e}");
    assert!(e < 1e-4, "{e:e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Adapters PEFT made with transformers before 4.52 name the modules as the
/// hub files do (`base_model.model.language_model.model.layers.…`).
#[test]
fn an_adapter_in_the_old_key_layout_loads() {
    let r = reference();
    let ids = reference_ids(&r);
    let adapter_dir = models_dir().join(format!("{NAME}-dora"));
    let dir = temp_dir("gemma3-mm-old-adapter");
    copy_dir(&adapter_dir, &dir);
    let file = dir.join("adapter_model.safetensors");
    let renamed: BTreeMap<String, HostTensor> = read_safetensors(&file)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let old = k.replace(
                "base_model.model.model.language_model.",
                "base_model.model.language_model.model.",
            );
            assert_ne!(old, k);
            (old, t)
        })
        .collect();
    write_safetensors(&file, &renamed, None).unwrap();
    let mut m = Llama::load(gpu(), &models_dir().join(NAME)).unwrap();
    let adapter = AdapterWeights::load(&dir).unwrap();
    assert!(adapter
        .modules
        .keys()
        .all(|k| k.starts_with(GEMMA3_LANGUAGE_MODEL)));
    m.attach_adapter(&adapter).unwrap();
    let want = tensors()["logits.tiny-gemma3-mm.dora"].to_f32();
    let e = rel_err(&logits(&m, &ids), &want);
    assert!(e < 1e-4, "{e:e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// PEFT's adapter for target_modules ["q_proj"] also wraps SigLIP's q_proj:
/// refused in one line that names that module, by the library and by merge.
#[test]
fn an_adapter_on_the_vision_tower_is_refused() {
    let r = reference();
    let vision = r["models"][NAME]["vision_adapter_modules"][0]
        .as_str()
        .unwrap();
    assert!(vision.starts_with("model.vision_tower."), "{vision}");
    let dir = models_dir().join(format!("{NAME}-vision-dora"));
    let adapter = AdapterWeights::load(&dir).unwrap();
    assert!(adapter.modules.contains_key(vision));
    let mut m = Llama::load(gpu(), &models_dir().join(NAME)).unwrap();
    one_line_error(
        m.attach_adapter(&adapter),
        &[vision, "vision tower", "not supported"],
    );
    let out = temp_dir("gemma3-mm-vision-merge").join("merged");
    cli_fails_with(
        &[
            "merge",
            "--model",
            &s(&models_dir().join(NAME)),
            "--adapter",
            &s(&dir),
            "--out",
            &s(&out),
        ],
        &[vision],
    );
    assert!(!out.exists());
}

/// `merge` writes every tensor under its stored name: the language model's
/// projections merged (as PEFT's merge_and_unload), everything else (vision
/// tower, projector, embedding, norms) byte for byte; config and tokenizer
/// files carried. From the other layout, that layout's names.
#[test]
fn merge_changes_only_the_language_model_projections() {
    let r = reference();
    let t = tensors();
    let base_dir = models_dir().join(NAME);
    let adapter = models_dir().join(format!("{NAME}-dora"));
    let root = temp_dir("gemma3-mm-merge");
    let out = root.join("merged");
    dora_wgpu::tasks::merge_model(gpu(), &base_dir, &adapter, &out).unwrap();
    let base = read_safetensors(&base_dir.join("model.safetensors")).unwrap();
    let merged = read_safetensors(&out.join("model.safetensors")).unwrap();
    assert_eq!(
        base.keys().collect::<Vec<_>>(),
        merged.keys().collect::<Vec<_>>()
    );
    let projections = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    let mut changed = 0;
    for (name, b) in &base {
        let m = &merged[name];
        assert_eq!((m.dtype, &m.shape), (b.dtype, &b.shape), "{name}");
        let projection = name.starts_with("language_model.model.layers.")
            && projections
                .iter()
                .any(|p| name.ends_with(&format!("{p}.weight")));
        if projection {
            assert_ne!(m.bytes, b.bytes, "{name} was not merged");
            changed += 1;
        } else {
            assert_eq!(m.bytes, b.bytes, "{name} changed");
        }
    }
    assert_eq!(changed, 7 * 3);
    assert!(base.keys().any(|k| k.starts_with("vision_tower.")));
    assert!(base.keys().any(|k| k.starts_with("multi_modal_projector.")));
    // The recorded modules against merge_and_unload (bf16: PEFT merges in bf16
    // arithmetic, we round once from f32).
    for key in r["merged"][NAME]["params"].as_array().unwrap() {
        let key = key.as_str().unwrap();
        let stored = key.replace("model.language_model.", "language_model.model.");
        assert_eq!(merged[&stored].dtype, DType::BF16);
        let e = rel_err(
            &merged[&stored].to_f32(),
            &t[&format!("merged.{NAME}.{key}")].to_f32(),
        );
        eprintln!("{key}: merged relative error {e:.2e}");
        assert!(e < 8e-3, "{key}: {e:e}");
    }
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(base_dir.join(f)).unwrap(),
            "{f}"
        );
    }
    // The merged directory is a model: its logits are the adapter's, to bf16 rounding.
    let ids = reference_ids(&r);
    let m = Llama::load(gpu(), &out).unwrap();
    let e = rel_err(&logits(&m, &ids), &t["logits.tiny-gemma3-mm.dora"].to_f32());
    eprintln!("merged model logits vs PEFT's adapter: relative error {e:.2e}");
    assert!(e < 2e-2, "{e:e}");

    // From the in-memory layout, its own names come out.
    let new_dir = copy_in_memory_layout(&r, "gemma3-mm-merge-new");
    let out_new = root.join("merged-new");
    dora_wgpu::tasks::merge_model(gpu(), &new_dir, &adapter, &out_new).unwrap();
    let merged_new = read_safetensors(&out_new.join("model.safetensors")).unwrap();
    let layouts = r["models"][NAME]["key_layouts"].as_object().unwrap();
    for (old, new) in layouts {
        assert_eq!(
            merged_new[new.as_str().unwrap()].bytes,
            merged[old].bytes,
            "{new}"
        );
    }
    std::fs::remove_dir_all(&root).ok();
    std::fs::remove_dir_all(&new_dir).ok();
}

/// `train --model` on the multimodal checkpoint writes PEFT's keys for it and
/// a target_modules regex that matches the adapted modules and none of the
/// vision tower's; `eval` and `generate` with the committed adapter give
/// transformers' numbers.
#[test]
fn cli_trains_evaluates_and_generates() {
    let r = reference();
    let root = temp_dir("gemma3-mm-cli");
    let model = s(&models_dir().join(NAME));
    let lines = std::fs::read_to_string(fixture("data/eval.jsonl")).unwrap();
    let data = data_dir_with(&root, &lines);
    let out = root.join("adapter");
    let (ok, stdout, stderr) = run_cli(&[
        "train",
        "--model",
        &model,
        "--data",
        &s(&data),
        "--adapter-path",
        &s(&out),
        "--iters",
        "2",
        "--num-layers",
        "2",
        "--steps-per-eval",
        "0",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    let regex = config["target_modules"].as_str().expect("a regex string");
    // PEFT's full match of a str target_modules.
    let re = regex::Regex::new(&format!("^(?:{regex})$")).unwrap();
    let vision = r["models"][NAME]["vision_adapter_modules"][0]
        .as_str()
        .unwrap();
    assert!(!re.is_match(vision), "{regex} matches {vision}");
    let keys = read_safetensors(&out.join("adapter_model.safetensors")).unwrap();
    assert_eq!(
        keys.len(),
        3 * 7 * 2,
        "A, B, m × 7 projections × the last 2 layers"
    );
    for k in keys.keys() {
        let module = k
            .strip_prefix("base_model.model.")
            .unwrap()
            .rsplit_once(".lora_")
            .unwrap()
            .0;
        assert!(
            module.starts_with("model.language_model.layers.1.")
                || module.starts_with("model.language_model.layers.2."),
            "{k}"
        );
        assert!(re.is_match(module), "{regex} does not match {module}");
    }
    assert!(!re.is_match("model.language_model.layers.0.self_attn.q_proj"));
    assert!(config["layers_to_transform"].is_null(), "{config}");
    // The adapter loads back onto the model.
    let mut m = Llama::load(gpu(), &models_dir().join(NAME)).unwrap();
    m.attach_adapter(&AdapterWeights::load(&out).unwrap())
        .unwrap();

    let adapter = s(&models_dir().join(format!("{NAME}-dora")));
    let data_file = s(&fixture("data/eval.jsonl"));
    let (ok, stdout, stderr) = run_cli(&[
        "eval",
        "--model",
        &model,
        "--adapter",
        &adapter,
        "--data",
        &data_file,
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let got: Value = serde_json::from_str(stdout.trim()).unwrap();
    let want = &r["eval_loss"][NAME]["dora"];
    let (loss, want_loss) = (
        got["loss"].as_f64().unwrap(),
        want["loss"].as_f64().unwrap(),
    );
    eprintln!("eval loss {loss:.6} vs transformers {want_loss:.6}");
    assert!((loss - want_loss).abs() < 1e-4 * want_loss);
    assert_eq!(got["tokens"], want["tokens"]);

    let g = &r["generate"][NAME]["dora"];
    let n = g["generated_ids"].as_array().unwrap().len().to_string();
    let (ok, stdout, stderr) = run_cli(&[
        "generate",
        "--model",
        &model,
        "--adapter",
        &adapter,
        "--prompt",
        "Tell me about the fox.",
        "--chat",
        "--max-tokens",
        &n,
        "--temperature",
        "0",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout.strip_suffix('\n').unwrap(),
        g["generated_text"].as_str().unwrap()
    );
    std::fs::remove_dir_all(&root).ok();
}

/// PEFT's selection on the multimodal paths: `layers_to_transform` finds N in
/// `model.language_model.layers.N.…` for a list of names, and PEFT ignores it
/// for a regex `target_modules`.
#[test]
fn layers_to_transform_applies_as_peft_applies_it() {
    let committed = AdapterWeights::load(&models_dir().join(format!("{NAME}-dora"))).unwrap();
    let mut m = Llama::load(gpu(), &models_dir().join(NAME)).unwrap();
    let shapes = m.linear_shapes();
    let mut names = committed.clone();
    names.config.target_modules = dora_wgpu::io::TargetModules::Names(
        [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
        .map(String::from)
        .to_vec(),
    );
    names
        .config
        .other
        .insert("layers_to_transform".into(), serde_json::json!([2]));
    one_line_error(
        names.check_fits(&shapes),
        &[
            "model.language_model.layers.0.",
            "does not select",
            "layers_to_transform [2]",
        ],
    );
    names.modules.retain(|k, _| k.contains(".layers.2."));
    names.check_fits(&shapes).unwrap();
    // The committed adapter's regex covers all three layers, whatever layers_to_transform says.
    let mut regex = committed.clone();
    regex
        .config
        .other
        .insert("layers_to_transform".into(), serde_json::json!([2]));
    regex.check_fits(&shapes).unwrap();
    m.attach_adapter(&regex).unwrap();
}
