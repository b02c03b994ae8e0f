//! Llama-family models against transformers + PEFT (tests/fixtures/models:
//! tiny-llama and tiny-qwen2 in reference.json, written by
//! tools/gen_fixtures.py; tiny-llama3 (llama3 RoPE), tiny-qwen3 (q/k norms,
//! bf16), tiny-gemma3 (sliding windows, GeGLU, 1 + w norms) and tiny-phi3
//! (fused qkv and gate_up projections) in families.json, written by
//! tools/gen_family_fixtures.py; tiny-gemma3-mm, a multimodal Gemma 3 whose
//! language model sits under `language_model.model.`, in gemma3_mm.json,
//! written by tools/gen_gemma3_mm_fixture.py): logits with and
//! without a DoRA adapter, the NLL behind `eval`, greedy generation, the KV
//! cache, merging.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use dora_wgpu::io::{read_safetensors, AdapterWeights, HostTensor};
use dora_wgpu::nn::Llama;
use dora_wgpu::{no_grad, DType, Tensor};
use serde_json::Value;

/// Each tiny model with the fixture file that holds its reference numbers.
const MODELS: [(&str, &str); 7] = [
    ("reference", "tiny-llama"),
    ("reference", "tiny-qwen2"),
    ("families", "tiny-llama3"),
    ("families", "tiny-qwen3"),
    ("families", "tiny-gemma3"),
    ("families", "tiny-phi3"),
    ("gemma3_mm", "tiny-gemma3-mm"),
];

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models")
}

/// A fixture file's JSON and tensors, read once per test binary.
struct Reference {
    json: Value,
    tensors: BTreeMap<String, HostTensor>,
}

fn read_reference(stem: &str) -> Reference {
    let dir = models_dir();
    Reference {
        json: serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{stem}.json"))).unwrap(),
        )
        .unwrap(),
        tensors: read_safetensors(&dir.join(format!("{stem}.safetensors"))).unwrap(),
    }
}

fn reference_file(stem: &str) -> &'static Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    static FAMILIES: OnceLock<Reference> = OnceLock::new();
    static GEMMA3_MM: OnceLock<Reference> = OnceLock::new();
    match stem {
        "reference" => REFERENCE.get_or_init(|| read_reference(stem)),
        "gemma3_mm" => GEMMA3_MM.get_or_init(|| read_reference(stem)),
        _ => FAMILIES.get_or_init(|| read_reference(stem)),
    }
}

fn reference() -> Value {
    reference_file("reference").json.clone()
}

fn load(model: &str, adapter: bool) -> Llama {
    let mut m = Llama::load(gpu(), &models_dir().join(model)).unwrap();
    if adapter {
        let a = AdapterWeights::load(&models_dir().join(format!("{model}-dora"))).unwrap();
        m.attach_adapter(&a).unwrap();
    }
    m
}

fn ids_of(v: &Value) -> Vec<i32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap() as i32)
        .collect()
}

#[test]
fn configs_load_in_both_rope_layouts_and_dtypes() {
    let llama = load("tiny-llama", false);
    assert_eq!(
        llama.config.rope_theta, 20000.0,
        "rope_parameters.rope_theta"
    );
    assert!(llama.config.tie_word_embeddings && llama.lm_head.is_none());
    assert_eq!(llama.embed_tokens.dtype(), DType::F32);
    let qwen = load("tiny-qwen2", false);
    assert_eq!(qwen.config.rope_theta, 1_000_000.0, "top-level rope_theta");
    assert!(qwen.lm_head.is_some());
    assert_eq!(
        qwen.embed_tokens.dtype(),
        DType::BF16,
        "frozen weights stay 16-bit on the GPU"
    );
    assert!(
        qwen.layers[0].projections[0].base().bias.is_some(),
        "Qwen2 q_proj has a bias"
    );
    assert!(
        qwen.layers[0].projections[3].base().bias.is_none(),
        "o_proj has none"
    );
}

#[test]
fn logits_match_transformers_with_and_without_adapter() {
    for (stem, model) in MODELS {
        let Reference { json: r, tensors } = reference_file(stem);
        let ids = ids_of(&r["logits"][model]["ids"]);
        for adapter in [false, true] {
            let m = load(model, adapter);
            let _g = no_grad();
            let t = Tensor::from_i32(gpu(), &ids, &[1, ids.len()]).unwrap();
            let logits = m.logits(&m.forward_hidden(&t, None).unwrap()).unwrap();
            assert_eq!(logits.shape(), &[1, ids.len(), m.config.vocab_size]);
            let key = r["logits"][model][if adapter { "dora" } else { "none" }]
                .as_str()
                .unwrap();
            let e = rel_err(&logits.to_vec_f32().unwrap(), &tensors[key].to_f32());
            eprintln!("{model} adapter={adapter}: logits relative error {e:.2e}");
            assert!(
                e < 1e-4,
                "{model} adapter={adapter}: logits differ by {e:e}"
            );
        }
    }
}

/// Summed NLL and scored-token count of `m` over a fixture's eval lines.
fn eval_nll(m: &Llama, lines: &Value) -> (f64, usize) {
    let (mut total, mut count) = (0.0, 0);
    for line in lines.as_array().unwrap() {
        let ids = ids_of(&line["ids"]);
        let scored: Vec<usize> = line["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        // position t - 1 predicts token t
        let mut targets = vec![dora_wgpu::ops::IGNORE_INDEX; ids.len() - 1];
        for &t in &scored {
            targets[t - 1] = ids[t];
        }
        let x = Tensor::from_i32(gpu(), &ids[..ids.len() - 1], &[1, ids.len() - 1]).unwrap();
        let _g = no_grad();
        let h = m.forward_hidden(&x, None).unwrap();
        let h = dora_wgpu::ops::reshape(&h, &[ids.len() - 1, m.config.hidden_size]).unwrap();
        let (nll, n) = m.nll_sum(&h, &targets, 7).unwrap();
        total += nll;
        count += n;
    }
    (total, count)
}

/// Asserts the eval loss of `m` equals transformers' `want` (loss, tokens).
fn check_eval_loss(what: &str, m: &Llama, lines: &Value, want: &Value) {
    let (total, count) = eval_nll(m, lines);
    assert_eq!(count as u64, want["tokens"].as_u64().unwrap());
    let loss = total / count as f64;
    let want_loss = want["loss"].as_f64().unwrap();
    eprintln!("{what}: loss {loss:.6} vs transformers {want_loss:.6}");
    assert!(
        (loss - want_loss).abs() < 1e-4 * want_loss,
        "{what}: {loss} vs {want_loss}"
    );
}

#[test]
fn nll_over_the_eval_file_matches_transformers() {
    for (stem, model) in MODELS {
        let r = &reference_file(stem).json;
        for (adapter, key) in [(false, "none"), (true, "dora")] {
            check_eval_loss(
                &format!("{model} {key}"),
                &load(model, adapter),
                &r["eval"][model]["lines"],
                &r["eval_loss"][model][key],
            );
        }
    }
}

/// Greedy decoding with the KV cache, one token per step.
fn greedy(m: &Llama, prompt: &[i32], new_tokens: usize) -> Vec<i32> {
    let _g = no_grad();
    let mut cache = m.new_cache(prompt.len() + new_tokens).unwrap();
    let mut input = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..new_tokens {
        let t = Tensor::from_i32(gpu(), &input, &[1, input.len()]).unwrap();
        let h = m.forward_hidden(&t, Some(&mut cache)).unwrap();
        let last = dora_wgpu::ops::slice_rows(
            &dora_wgpu::ops::reshape(&h, &[input.len(), m.config.hidden_size]).unwrap(),
            input.len() - 1,
            1,
        )
        .unwrap();
        let logits = m.logits(&last).unwrap().to_vec_f32().unwrap();
        let next = logits
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
            .0 as i32;
        out.push(next);
        input = vec![next];
    }
    out
}

#[test]
fn greedy_generation_with_kv_cache_reproduces_transformers() {
    for (stem, model) in MODELS {
        let r = &reference_file(stem).json;
        for (adapter, key) in [(false, "none"), (true, "dora")] {
            let m = load(model, adapter);
            let g = &r["generate"][model][key];
            let prompt = ids_of(&g["prompt_ids"]);
            let want = ids_of(&g["generated_ids"]);
            assert_eq!(greedy(&m, &prompt, want.len()), want, "{model} {key}");
        }
    }
}

#[test]
fn kv_cache_path_equals_the_full_forward() {
    let m = load("tiny-qwen2", true);
    let _g = no_grad();
    let ids: Vec<i32> = (0..12).map(|i| i * 37 % 384).collect();
    let full = m
        .logits(
            &m.forward_hidden(&Tensor::from_i32(gpu(), &ids, &[1, 12]).unwrap(), None)
                .unwrap(),
        )
        .unwrap()
        .to_vec_f32()
        .unwrap();
    // Prefill 5 tokens, then 3, then 4 one at a time: every position's logits must match.
    let mut cache = m.new_cache(12).unwrap();
    let mut pieces = Vec::new();
    for (start, len) in [(0, 5), (5, 3), (8, 1), (9, 1), (10, 1), (11, 1)] {
        let t = Tensor::from_i32(gpu(), &ids[start..start + len], &[1, len]).unwrap();
        pieces.extend(
            m.logits(&m.forward_hidden(&t, Some(&mut cache)).unwrap())
                .unwrap()
                .to_vec_f32()
                .unwrap(),
        );
    }
    assert_eq!(cache.len(), 12);
    let e = rel_err(&pieces, &full);
    assert!(e < 1e-5, "cached logits differ by {e:e}");
    // A cache that is full is an error, not a crash.
    let t = Tensor::from_i32(gpu(), &[1], &[1, 1]).unwrap();
    assert!(m.forward_hidden(&t, Some(&mut cache)).is_err());
}

#[test]
fn merged_weights_match_peft_merge_and_unload() {
    for (stem, model) in MODELS {
        let Reference { json: r, tensors } = reference_file(stem);
        let m = load(model, true);
        let merged = m.merged_weights().unwrap();
        let dtype = match r["merged"][model]["dtype"].as_str().unwrap() {
            "bfloat16" => DType::BF16,
            "float32" => DType::F32,
            other => panic!("{model}: merged dtype {other}"),
        };
        let mut checked = 0;
        for name in r["merged"][model]["params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
        {
            let Some(ours) = merged.get(name) else {
                continue;
            }; // biases are not merged
            assert_eq!(ours.dtype(), dtype, "{model} {name}");
            let want = tensors[&format!("merged.{model}.{name}")].to_f32();
            let got = ours.to_vec_f32().unwrap();
            // f32: to f32 rounding; bf16: PEFT merges in bf16 arithmetic, we round once from f32.
            let tol = if dtype == DType::BF16 { 8e-3 } else { 1e-5 };
            let e = rel_err(&got, &want);
            assert!(e < tol, "{model} {name}: merged weight differs by {e:e}");
            checked += 1;
        }
        let layers = m.config.num_hidden_layers;
        let per_layer = m.layers[0].projections.len();
        // gemma3_mm records three modules (the fixture's size); the others all of them.
        let recorded = r["merged"][model]["params"].as_array().unwrap().len();
        let want = if stem == "gemma3_mm" {
            recorded
        } else {
            per_layer * layers
        };
        assert_eq!(
            checked, want,
            "{model}: {per_layer} projections × {layers} layers"
        );
    }
}

#[test]
fn fine_tuning_new_adapters_lowers_the_loss_and_the_saved_adapter_reloads() {
    use dora_wgpu::io::AdapterConfig;
    use dora_wgpu::nn::AdapterOptions;
    use dora_wgpu::optim::{AdamW, AdamWConfig};
    let r = reference();
    let mut m = load("tiny-llama", false);
    let options = AdapterOptions {
        rank: 4,
        alpha: 8.0,
        ..Default::default()
    };
    m.add_adapters(&options, true, &[], 7).unwrap();
    assert_eq!(
        m.parameters().len(),
        2 * 7 * 3,
        "A, B, m on 7 projections × 2 layers"
    );
    // One text line of the eval file, as a single sequence.
    let line = &r["eval"]["tiny-llama"]["lines"][0];
    let ids = ids_of(&line["ids"]);
    let n = ids.len() - 1;
    let x = Tensor::from_i32(gpu(), &ids[..n], &[1, n]).unwrap();
    let targets: Vec<i32> = ids[1..].to_vec();
    let loss_of = |m: &Llama| -> dora_wgpu::Tensor {
        let h = dora_wgpu::ops::reshape(
            &m.forward_hidden(&x, None).unwrap(),
            &[n, m.config.hidden_size],
        )
        .unwrap();
        m.loss(&h, &targets, 8).unwrap()
    };
    let mut opt = AdamW::new(
        m.parameters(),
        AdamWConfig {
            lr: 1e-2,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let first = loss_of(&m).item().unwrap();
    for _ in 0..15 {
        opt.zero_grad();
        let loss = loss_of(&m);
        loss.backward().unwrap();
        opt.step().unwrap();
    }
    let last = {
        let _g = no_grad();
        loss_of(&m).item().unwrap()
    };
    assert!(last < 0.5 * first, "loss {first} -> {last}");
    // Saved in PEFT's format and attached to a fresh copy of the base, it gives the same loss.
    let dir = std::env::temp_dir().join(format!("dora-wgpu-trained-{}", std::process::id()));
    m.adapter_weights(AdapterConfig::new(
        4,
        8.0,
        true,
        &[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
    ))
    .unwrap()
    .save(&dir)
    .unwrap();
    let mut reloaded = load("tiny-llama", false);
    reloaded
        .attach_adapter(&AdapterWeights::load(&dir).unwrap())
        .unwrap();
    let again = {
        let _g = no_grad();
        loss_of(&reloaded).item().unwrap()
    };
    assert!(
        (again - last).abs() < 1e-5 * last.abs().max(1.0),
        "{again} vs {last}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn gradient_checkpointing_gives_the_same_gradients_in_less_memory() {
    // A context of its own: the peak-memory figures must not see other tests' tensors.
    let gpu = dora_wgpu::Gpu::new().unwrap();
    let mut m = Llama::load(&gpu, &models_dir().join("tiny-llama")).unwrap();
    let adapter = AdapterWeights::load(&models_dir().join("tiny-llama-dora")).unwrap();
    m.attach_adapter(&adapter).unwrap();
    let (batch, seq) = (2, 256);
    let mut rng = dora_wgpu::nn::Rng::new(5);
    let vocab = m.config.vocab_size as i32;
    let ids: Vec<i32> = (0..batch * seq)
        .map(|_| (rng.uniform_in(0.0, 1.0) * vocab as f32) as i32 % vocab)
        .collect();
    // Each row predicts its own next tokens.
    let rows: Vec<&[i32]> = ids.chunks(seq).collect();
    let inputs: Vec<i32> = rows.iter().flat_map(|r| &r[..seq - 1]).copied().collect();
    let targets: Vec<i32> = rows.iter().flat_map(|r| &r[1..]).copied().collect();
    let x = Tensor::from_i32(&gpu, &inputs, &[batch, seq - 1]).unwrap();
    // Gradients of every adapter tensor and the peak memory of one forward + backward.
    let run = |m: &Llama| -> (Vec<Vec<f32>>, u64) {
        for p in m.parameters() {
            p.zero_grad();
        }
        gpu.synchronize().unwrap();
        gpu.reset_peak_memory();
        let base = gpu.memory_stats().live_bytes;
        let h = m.forward_hidden_train(&x, 3).unwrap();
        let h = dora_wgpu::ops::reshape(&h, &[batch * (seq - 1), m.config.hidden_size]).unwrap();
        let loss = m.loss(&h, &targets, 64).unwrap();
        drop(h);
        loss.backward().unwrap();
        gpu.synchronize().unwrap();
        let peak = gpu.memory_stats().peak_live_bytes - base;
        let grads = m
            .parameters()
            .iter()
            .map(|p| {
                p.grad()
                    .expect("every adapter tensor gets a gradient")
                    .to_vec_f32()
                    .unwrap()
            })
            .collect();
        (grads, peak)
    };
    let (plain, plain_peak) = run(&m);
    m.grad_checkpoint = true;
    let (recomputed, checkpoint_peak) = run(&m);
    for (i, (g, want)) in recomputed.iter().zip(&plain).enumerate() {
        assert_close(&format!("parameter {i}"), g, &to_f64(want), 1e-5, 1e-6);
    }
    eprintln!("peak memory: plain {plain_peak} B, checkpointed {checkpoint_peak} B");
    assert!(
        (checkpoint_peak as f64) < 0.8 * plain_peak as f64,
        "checkpointing should hold less: {checkpoint_peak} vs {plain_peak} bytes"
    );
}

/// PEFT's own DoRA training on tiny-gemma3 (GeGLU, sandwich norms, sliding
/// windows), step for step: the same initial adapter, full-batch AdamW on the
/// eval text lines, the same losses and the same adapter after four steps.
#[test]
fn training_steps_on_gemma3_match_peft() {
    let Reference { json: r, tensors } = reference_file("families");
    let t = &r["train_steps"]["tiny-gemma3"];
    let mut m = Llama::load(gpu(), &models_dir().join("tiny-gemma3")).unwrap();
    check_peft_steps(&mut m, t, t, tensors);
}

/// Trains `m` (its initial adapter attached) as PEFT did: the data and
/// optimizer of `setup` (families.json's train_steps), and after each step
/// the losses, the loss after and the adapter recorded in `want`, whose
/// tensors are in `tensors` under `want.prefix`.
fn check_peft_steps(
    m: &mut Llama,
    setup: &Value,
    want: &Value,
    tensors: &BTreeMap<String, HostTensor>,
) {
    use dora_wgpu::optim::{AdamW, AdamWConfig};
    let init = AdapterWeights::load(&models_dir().join("tiny-gemma3-dora-init")).unwrap();
    m.attach_adapter(&init).unwrap();
    // The sequences right-padded into one batch; padding is never a target,
    // and causal attention keeps it out of the real positions.
    let seqs: Vec<Vec<i32>> = setup["data"]["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids_of)
        .collect();
    let len = seqs.iter().map(|s| s.len() - 1).max().unwrap();
    let (mut inputs, mut targets) = (Vec::new(), Vec::new());
    for s in &seqs {
        let n = s.len() - 1;
        inputs.extend(
            s[..n]
                .iter()
                .copied()
                .chain(std::iter::repeat_n(0, len - n)),
        );
        targets.extend(
            s[1..]
                .iter()
                .copied()
                .chain(std::iter::repeat_n(dora_wgpu::ops::IGNORE_INDEX, len - n)),
        );
    }
    let x = Tensor::from_i32(gpu(), &inputs, &[seqs.len(), len]).unwrap();
    let loss_of = |m: &Llama| {
        let h = dora_wgpu::ops::reshape(
            &m.forward_hidden(&x, None).unwrap(),
            &[seqs.len() * len, m.config.hidden_size],
        )
        .unwrap();
        m.loss(&h, &targets, 16).unwrap()
    };
    let o = &setup["optimizer"];
    let f = |v: &Value| v.as_f64().unwrap() as f32;
    let mut opt = AdamW::new(
        m.parameters(),
        AdamWConfig {
            lr: f(&o["lr"]),
            beta1: f(&o["betas"][0]),
            beta2: f(&o["betas"][1]),
            eps: f(&o["eps"]),
            weight_decay: f(&o["weight_decay"]),
        },
    )
    .unwrap();
    let losses: Vec<f64> = want["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (step, want) in losses.iter().enumerate() {
        opt.zero_grad();
        let loss = loss_of(m);
        let got = loss.item().unwrap() as f64;
        eprintln!("step {step}: loss {got:.6} vs PEFT {want:.6}");
        assert!(
            (got - want).abs() < 2e-5 * want,
            "step {step}: {got} vs {want}"
        );
        loss.backward().unwrap();
        opt.step().unwrap();
    }
    let after = {
        let _g = no_grad();
        loss_of(m).item().unwrap() as f64
    };
    let want_after = want["loss_after"].as_f64().unwrap();
    assert!(
        (after - want_after).abs() < 2e-5 * want_after,
        "{after} vs {want_after}"
    );
    // Every adapter tensor after the steps, as PEFT saved it. Adam divides
    // by √v, so entries whose gradients are near zero amplify f32 rounding:
    // a bound relative to each tensor's scale, not per entry.
    let prefix = want["prefix"].as_str().unwrap();
    let named = m.named_parameters();
    assert_eq!(named.len(), want["keys"].as_array().unwrap().len());
    let mut worst = (0.0, String::new());
    for (name, tensor) in named {
        let key = format!("{prefix}base_model.model.{name}");
        let e = rel_err(&tensor.to_vec_f32().unwrap(), &tensors[&key].to_f32());
        if e > worst.0 {
            worst = (e, name);
        }
    }
    eprintln!(
        "adapter after 4 steps: worst relative error {:.2e} ({})",
        worst.0, worst.1
    );
    assert!(
        worst.0 < 1e-3,
        "{}: differs from PEFT by {:e}",
        worst.1,
        worst.0
    );
}

/// tiny-gemma3 with `final_logit_softcapping` set (tools/gen_softcap_fixture.py):
/// the capped logits, eval losses and PEFT training steps, so the cap is
/// applied in the logits and in the loss's forward and backward.
#[test]
fn soft_capped_gemma3_matches_transformers_and_peft() {
    let Reference { json: r, tensors } = &read_reference("softcap");
    let families = &reference_file("families").json;
    let cap = r["final_logit_softcapping"].as_f64().unwrap();
    assert!(
        r["max_abs_uncapped_logit"].as_f64().unwrap() > cap,
        "the cap must bite"
    );
    let dir = temp_dir("softcap-gemma3");
    copy_dir(&models_dir().join("tiny-gemma3"), &dir);
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config["final_logit_softcapping"] = cap.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();

    let ids = ids_of(&r["logits"]["ids"]);
    let lines = &families["eval"]["tiny-gemma3"]["lines"];
    for (adapter, key) in [(false, "none"), (true, "dora")] {
        let mut m = Llama::load(gpu(), &dir).unwrap();
        assert_eq!(m.config.final_logit_softcapping, Some(cap as f32));
        if adapter {
            let a = AdapterWeights::load(&models_dir().join("tiny-gemma3-dora")).unwrap();
            m.attach_adapter(&a).unwrap();
        }
        let logits = {
            let _g = no_grad();
            let t = Tensor::from_i32(gpu(), &ids, &[1, ids.len()]).unwrap();
            m.logits(&m.forward_hidden(&t, None).unwrap()).unwrap()
        };
        let want = &tensors[r["logits"][key].as_str().unwrap()];
        let e = rel_err(&logits.to_vec_f32().unwrap(), &want.to_f32());
        eprintln!("soft-capped {key}: logits relative error {e:.2e}");
        assert!(e < 1e-4, "soft-capped {key}: logits differ by {e:e}");
        check_eval_loss(
            &format!("soft-capped {key}"),
            &m,
            lines,
            &r["eval_loss"][key],
        );
    }
    let mut m = Llama::load(gpu(), &dir).unwrap();
    check_peft_steps(
        &mut m,
        &families["train_steps"]["tiny-gemma3"],
        &r["train_steps"],
        tensors,
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
