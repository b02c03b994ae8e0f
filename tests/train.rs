//! The trainer: step-by-step parity with a PEFT training run
//! (tests/fixtures/train_parity, made by tools/gen_train_fixture.py), exact
//! resume, atomic checkpoints, the NaN guard and cancellation.

mod common;

use std::ops::ControlFlow;
use std::path::Path;

use common::{fixture, gpu, temp_dir};
use dora_wgpu::io::AdapterWeights;
use dora_wgpu::nn::{projections, Llama};
use dora_wgpu::text::data::random_examples_of_lengths;
use dora_wgpu::text::data::{read_jsonl, Example};
use dora_wgpu::train::{checkpoint, Batcher, Event, Method, Schedule, Stop, TrainConfig, Trainer};
use dora_wgpu::{DType, Error, Tokenizer};
use serde_json::Value;

fn tiny_llama() -> Llama {
    Llama::load(gpu(), &fixture("models/tiny-llama")).unwrap()
}

/// The tiny model on a context of its own: memory figures of tests running
/// side by side on a shared context would mix.
fn own_tiny_llama() -> Llama {
    let gpu = dora_wgpu::Gpu::new().unwrap();
    Llama::load(&gpu, &fixture("models/tiny-llama")).unwrap()
}

fn examples(dir: &Path, file: &str) -> Vec<Example> {
    let tok = Tokenizer::from_dir(fixture("models/tiny-llama")).unwrap();
    read_jsonl(&dir.join(file), &tok).unwrap()
}

fn parity() -> Value {
    let text = std::fs::read_to_string(fixture("train_parity/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The fixture's hyper-parameters as a TrainConfig.
fn parity_config(e: &Value) -> TrainConfig {
    let h = &e["hyperparameters"];
    assert_eq!(h["schedule"], "cosine");
    assert_eq!(h["betas"], serde_json::json!([0.9, 0.999]));
    TrainConfig {
        iters: h["steps"].as_u64().unwrap() as usize,
        batch_size: h["batch_size"].as_u64().unwrap() as usize,
        grad_accum: h["grad_accum"].as_u64().unwrap() as usize,
        max_seq_len: h["max_seq_len"].as_u64().unwrap() as usize,
        lr: h["lr"].as_f64().unwrap() as f32,
        schedule: Schedule::Cosine,
        warmup: h["warmup_steps"].as_u64().unwrap() as usize,
        weight_decay: h["weight_decay"].as_f64().unwrap() as f32,
        grad_clip: h["grad_clip"].as_f64().unwrap() as f32,
        shuffle: false,
        steps_per_eval: 0,
        val_batches: 0,
        ..TrainConfig::default()
    }
}

fn rel(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-12)
}

/// Every micro-batch equals the fixture's, token by token: ids, and the
/// targets of all three line formats (text, prompt/completion, messages).
#[test]
fn batches_equal_the_reference_pipeline_token_by_token() {
    let e = parity();
    let config = parity_config(&e);
    let (train, report) = dora_wgpu::train::prepare(
        examples(&fixture("train_parity/data"), "train.jsonl"),
        config.max_seq_len,
    );
    assert_eq!((report.truncated, report.dropped), (1, 1));
    let mut batcher = Batcher::new(train, config.batch_size, false, 0);
    for (j, want) in e["batches"].as_array().unwrap().iter().enumerate() {
        let got = batcher.next_batch().unwrap();
        let hf_ids: Vec<Vec<i64>> = want["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(ints)
            .collect();
        let hf_labels: Vec<Vec<i64>> = want["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(ints)
            .collect();
        let lengths = ints(&want["lengths"]);
        assert_eq!(got.batch, hf_ids.len(), "micro-batch {j}: rows");
        // transformers shifts inside the model: our row holds positions 0..L−1
        // and the target of position t is HF's label at t + 1.
        assert_eq!(got.seq + 1, hf_ids[0].len(), "micro-batch {j}: length");
        for b in 0..got.batch {
            for t in 0..got.seq {
                let k = b * got.seq + t;
                if (t as i64) < lengths[b] - 1 {
                    assert_eq!(
                        got.ids[k] as i64, hf_ids[b][t],
                        "micro-batch {j} row {b} id {t}"
                    );
                }
                assert_eq!(
                    got.targets[k] as i64,
                    hf_labels[b][t + 1],
                    "micro-batch {j} row {b} target {t}"
                );
            }
        }
    }
}

fn check_parity(method: &str) {
    let e = parity();
    check_parity_run(
        tiny_llama(),
        "train_parity",
        method,
        &e[method],
        parity_config(&e),
    );
}

/// Trains `model` from `{dir}/init-{method}` with the fixture's data and
/// compares every step, the validation losses and `{dir}/final-{method}`
/// with PEFT's run recorded in `reference`.
fn check_parity_run(model: Llama, dir: &str, method: &str, reference: &Value, config: TrainConfig) {
    let adapter = AdapterWeights::load(&fixture(&format!("{dir}/init-{method}"))).unwrap();
    let data = fixture("train_parity/data");
    let mut trainer = Trainer::with_adapter(
        model,
        &adapter,
        config,
        examples(&data, "train.jsonl"),
        examples(&data, "valid.jsonl"),
    )
    .unwrap();
    assert_eq!(
        trainer.config().method,
        if method == "dora" {
            Method::Dora
        } else {
            Method::Lora
        }
    );
    let (valid_init, _) = trainer.validate().unwrap().unwrap();
    let want_init = reference["valid_loss_init"].as_f64().unwrap();
    assert!(
        rel(valid_init, want_init) < 1e-5,
        "{method}: valid loss {valid_init} vs {want_init}"
    );
    let (losses, norms, lrs) = (
        floats(&reference["losses"]),
        floats(&reference["grad_norms"]),
        floats(&reference["lrs"]),
    );
    let mut worst = (0.0f64, 0.0f64);
    for s in 0..losses.len() {
        let st = trainer.train_step().unwrap();
        let (el, en) = (
            rel(st.loss as f64, losses[s]),
            rel(st.grad_norm as f64, norms[s]),
        );
        eprintln!(
            "{method} step {s}: loss {} vs {} ({el:.1e}), grad norm {} vs {} ({en:.1e})",
            st.loss, losses[s], st.grad_norm, norms[s]
        );
        // Bounds: f32 on both sides, different summation orders, 6 AdamW steps.
        assert!(
            el < 2e-5,
            "{method} step {s}: loss {} vs PEFT {}",
            st.loss,
            losses[s]
        );
        assert!(
            en < 1e-4,
            "{method} step {s}: grad norm {} vs PEFT {}",
            st.grad_norm,
            norms[s]
        );
        assert!(
            (st.lr as f64 - lrs[s]).abs() < 1e-9 + 1e-6 * lrs[s],
            "step {s}: lr"
        );
        worst = (worst.0.max(el), worst.1.max(en));
    }
    eprintln!(
        "{method}: worst relative error loss {:.1e}, grad norm {:.1e}",
        worst.0, worst.1
    );
    let (valid_final, _) = trainer.validate().unwrap().unwrap();
    let want_final = reference["valid_loss_final"].as_f64().unwrap();
    assert!(
        rel(valid_final, want_final) < 1e-5,
        "{method}: final valid loss {valid_final} vs {want_final}"
    );
    // The adapter after training equals PEFT's, tensor by tensor.
    let want = AdapterWeights::load(&fixture(&format!("{dir}/final-{method}"))).unwrap();
    let got = trainer.adapter().unwrap();
    assert_eq!(got.modules.len(), want.modules.len());
    for (module, w) in &want.modules {
        let g = &got.modules[module];
        let pairs = [
            ("lora_A", Some(&g.lora_a), Some(&w.lora_a)),
            ("lora_B", Some(&g.lora_b), Some(&w.lora_b)),
            ("magnitude", g.magnitude.as_ref(), w.magnitude.as_ref()),
        ];
        for (name, g, w) in pairs {
            let (Some(g), Some(w)) = (g, w) else {
                assert!(
                    g.is_none() && w.is_none(),
                    "{module} {name}: present on one side only"
                );
                continue;
            };
            let (g, w) = (g.to_f32(), w.to_f32());
            let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = g
                .iter()
                .zip(&w)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
                / scale;
            assert!(
                err < 1e-4,
                "{method} {module} {name}: differs from PEFT by {err:e} (relative to max)"
            );
        }
    }
}

#[test]
fn dora_training_matches_peft_step_by_step() {
    check_parity("dora");
}

#[test]
fn lora_training_matches_peft_step_by_step() {
    check_parity("lora");
}

/// QDoRA: the tiny model as a GGUF file with its projections in Q8_0, Q4_0,
/// Q4_1, Q5_0, Q5_1, F16, BF16 and F32, trained with those blocks kept on
/// the GPU, against PEFT training the model gguf-py decodes from the file
/// (tests/fixtures/train_parity/qdora, made by tools/gen_qdora_fixture.py).
#[test]
fn dora_training_on_a_quantized_gguf_base_matches_peft_on_the_decoded_base() {
    let text = std::fs::read_to_string(fixture("train_parity/qdora/expected.json")).unwrap();
    let q: Value = serde_json::from_str(&text).unwrap();
    let model = Llama::load(gpu(), &fixture("gguf_model/tiny-llama.gguf")).unwrap();
    // Each projection's base is held in the file's own format.
    let mut quantized = 0;
    for (l, layer) in model.layers.iter().enumerate() {
        for (p, (group, name)) in layer.projections.iter().zip(projections(&model.config)) {
            let key = format!("model.layers.{l}.{group}.{name}.weight");
            let held = match p.base().weight.dtype() {
                DType::Quant(k) => {
                    quantized += 1;
                    format!("{k:?}")
                }
                d => format!("{d:?}"),
            };
            assert_eq!(held, q["formats"][&key].as_str().unwrap(), "{key}");
        }
    }
    assert!(
        quantized >= 8,
        "only {quantized} projections held quantized"
    );
    let e = parity();
    check_parity_run(
        model,
        "train_parity/qdora",
        "dora",
        &q["dora"],
        parity_config(&e),
    );
}

/// Fresh DoRA adapters with dropout and shuffling, so resume must restore the
/// data position and dropout masks as well as the weights and AdamW state.
fn resume_config(iters: usize) -> TrainConfig {
    TrainConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.1,
        iters,
        batch_size: 3,
        grad_accum: 2,
        max_seq_len: 48,
        lr: 5e-3,
        schedule: Schedule::Cosine,
        warmup: 2,
        weight_decay: 0.01,
        steps_per_eval: 0,
        save_every: 0,
        seed: 11,
        ..TrainConfig::default()
    }
}

fn parity_examples() -> (Vec<Example>, Vec<Example>) {
    let data = fixture("train_parity/data");
    (
        examples(&data, "train.jsonl"),
        examples(&data, "valid.jsonl"),
    )
}

fn adapter_values(t: &Trainer) -> Vec<f32> {
    t.model()
        .parameters()
        .iter()
        .flat_map(|p| p.to_vec_f32().unwrap())
        .collect()
}

#[test]
fn k_steps_resume_k_steps_equals_2k_steps() {
    let k = 3;
    let (train, valid) = parity_examples();
    let mut straight = Trainer::new(
        tiny_llama(),
        resume_config(2 * k),
        train.clone(),
        valid.clone(),
    )
    .unwrap();
    let straight_losses: Vec<f32> = (0..2 * k)
        .map(|_| straight.train_step().unwrap().loss)
        .collect();

    let dir = temp_dir("resume");
    let mut first = Trainer::new(
        tiny_llama(),
        resume_config(2 * k),
        train.clone(),
        valid.clone(),
    )
    .unwrap()
    .with_output_dir(&dir);
    let mut losses: Vec<f32> = (0..k).map(|_| first.train_step().unwrap().loss).collect();
    let ckpt = first.save().unwrap();
    drop(first);
    let mut second = Trainer::new(tiny_llama(), resume_config(2 * k), train, valid).unwrap();
    second.resume(&ckpt).unwrap();
    assert_eq!(second.step_count(), k);
    losses.extend((0..k).map(|_| second.train_step().unwrap().loss));
    for (s, (a, b)) in losses.iter().zip(&straight_losses).enumerate() {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs(),
            "step {s}: resumed {a} vs straight {b}"
        );
    }
    let (a, b) = (adapter_values(&second), adapter_values(&straight));
    let worst = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs() / y.abs().max(1e-3)));
    assert!(worst <= 1e-6, "adapter after resume differs by {worst:e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resume_refuses_other_settings_or_data() {
    let (train, valid) = parity_examples();
    let dir = temp_dir("resume-mismatch");
    let mut t = Trainer::new(tiny_llama(), resume_config(4), train.clone(), valid.clone())
        .unwrap()
        .with_output_dir(&dir);
    t.train_step().unwrap();
    let ckpt = t.save().unwrap();
    let other = TrainConfig {
        rank: 8,
        ..resume_config(4)
    };
    let mut u = Trainer::new(tiny_llama(), other, train.clone(), valid.clone()).unwrap();
    let msg = u.resume(&ckpt).unwrap_err().to_string();
    assert!(
        msg.contains("rank") && msg.contains(&ckpt.display().to_string()) && !msg.contains('\n'),
        "{msg}"
    );
    let mut w = Trainer::new(tiny_llama(), resume_config(4), train[..5].to_vec(), valid).unwrap();
    let msg = w.resume(&ckpt).unwrap_err().to_string();
    assert!(msg.contains("other data"), "{msg}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_checkpoint_interrupted_before_its_rename_leaves_the_previous_one() {
    let (train, valid) = parity_examples();
    let dir = temp_dir("atomic");
    let mut t = Trainer::new(tiny_llama(), resume_config(6), train.clone(), valid.clone())
        .unwrap()
        .with_output_dir(&dir);
    t.train_step().unwrap();
    let good = t.save().unwrap();
    let good_values = adapter_values(&t);
    t.train_step().unwrap();
    // A crash between writing the next checkpoint and renaming it into place:
    // stage it, then never commit.
    let state = checkpoint::TrainerState {
        step: 2,
        data_position: 4,
        config: t.config().clone(),
        train_examples: t.train_examples(),
        data_fingerprint: "unused".into(),
    };
    let moments: Vec<_> = t
        .model()
        .named_parameters()
        .into_iter()
        .zip(t.optimizer().moments())
        .map(|((n, _), (m, v))| (n, m.clone(), v.clone()))
        .collect();
    let staged = checkpoint::stage(&dir, &t.adapter().unwrap(), &moments, &state).unwrap();
    // And a torn file inside the temporary folder, as a crash mid-write leaves.
    let temp_files: Vec<_> = std::fs::read_dir(dir.join(checkpoint::CHECKPOINTS_DIR))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(temp_files.len(), 1, "one temporary checkpoint folder");
    std::fs::write(
        temp_files[0].path().join("adapter_model.safetensors"),
        b"torn",
    )
    .unwrap();
    drop(staged);

    assert_eq!(checkpoint::latest(&dir), Some(good.clone()));
    let mut resumed = Trainer::new(tiny_llama(), resume_config(6), train, valid).unwrap();
    resumed.resume(&checkpoint::latest(&dir).unwrap()).unwrap();
    assert_eq!(resumed.step_count(), 1);
    assert_eq!(adapter_values(&resumed), good_values);
    // The adapter at the top of the folder is the last good one too, and PEFT-shaped.
    let top = AdapterWeights::load(&dir).unwrap();
    assert_eq!(top, resumed.adapter().unwrap());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint() {
    let (train, valid) = parity_examples();
    let dir = temp_dir("nan");
    // A learning rate far beyond f32's range blows the adapter up after one step.
    let config = TrainConfig {
        lr: 1e30,
        warmup: 0,
        schedule: Schedule::Constant,
        grad_clip: 0.0,
        save_every: 1,
        ..resume_config(10)
    };
    let mut t = Trainer::new(tiny_llama(), config, train, valid)
        .unwrap()
        .with_output_dir(&dir);
    let err = t.run(|_| ControlFlow::Continue(())).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Training(_)), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    let failed_step = t.step_count() + 1;
    assert!(msg.contains(&format!("step {failed_step}:")), "{msg}");
    let last = checkpoint::latest(&dir).expect("the steps before it were saved");
    assert!(msg.contains(&last.display().to_string()), "{msg}");
    let ckpt = checkpoint::load(&last).unwrap();
    assert_eq!(ckpt.state.step as usize, t.step_count());
    for m in ckpt.adapter.modules.values() {
        assert!(
            m.lora_a.to_f32().iter().all(|v| v.is_finite()),
            "saved adapter is finite"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn cancelling_saves_a_checkpoint_and_run_reports_validation() {
    let (train, valid) = parity_examples();
    let dir = temp_dir("cancel");
    let config = TrainConfig {
        steps_per_eval: 2,
        save_every: 0,
        ..resume_config(8)
    };
    let mut t = Trainer::new(tiny_llama(), config, train, valid)
        .unwrap()
        .with_output_dir(&dir);
    let mut vals = Vec::new();
    let summary = t
        .run(|ev| match ev {
            Event::Validation { step, loss, .. } => {
                vals.push((step, loss));
                ControlFlow::Continue(())
            }
            Event::Step(s) if s.step == 3 => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        })
        .unwrap();
    assert_eq!(summary.stop, Stop::Cancelled);
    assert_eq!(summary.step, 3);
    assert_eq!(vals.iter().map(|v| v.0).collect::<Vec<_>>(), vec![0, 2]);
    let ckpt = checkpoint::latest(&dir).unwrap();
    assert_eq!(checkpoint::load(&ckpt).unwrap().state.step, 3);
    // metrics.jsonl: one line per step and per validation.
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let lines: Vec<Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.iter().filter(|l| l.get("loss").is_some()).count(), 3);
    assert_eq!(
        lines.iter().filter(|l| l.get("val_loss").is_some()).count(),
        2
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Memory stays flat over a long run with random lengths and dropout: the
/// pool holds about one step's working set, not every size it has seen.
#[test]
fn gpu_memory_stays_flat_over_two_hundred_steps_of_random_lengths() {
    let examples = random_examples_of_lengths(384, 64, 4..=47, 15);
    let config = TrainConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.05,
        iters: 200,
        batch_size: 4,
        max_seq_len: 48,
        lr: 1e-3,
        steps_per_eval: 0,
        save_every: 0,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(own_tiny_llama(), config, examples, Vec::new()).unwrap();
    let steps: Vec<_> = (0..200).map(|_| t.train_step().unwrap()).collect();
    let most = |s: &[dora_wgpu::train::StepStats], f: fn(&dora_wgpu::train::StepStats) -> u64| {
        s.iter().map(f).max().unwrap() as f64
    };
    let allocated_by_10 = most(&steps[..10], |s| s.peak_gpu_bytes);
    let allocated = most(&steps, |s| s.peak_gpu_bytes);
    let live = most(&steps, |s| s.peak_live_bytes);
    eprintln!(
        "peak allocated: {:.2} MB by step 10, {:.2} MB by step 200; peak live {:.2} MB",
        allocated_by_10 / 1e6,
        allocated / 1e6,
        live / 1e6
    );
    assert!(
        allocated <= 1.25 * allocated_by_10,
        "grew from {allocated_by_10} to {allocated}"
    );
    assert!(
        allocated <= 1.3 * live,
        "{allocated} allocated for {live} live"
    );
}

/// The memory estimate a run is checked against before its first step is
/// close to (and not below) what a step really holds, with and without
/// gradient checkpointing and dropout.
#[test]
fn the_step_memory_estimate_matches_the_measured_peak() {
    let mut ratios = Vec::new();
    for (method, batch, seq, grad_checkpoint, dropout) in [
        (Method::Dora, 4, 64, false, 0.0),
        (Method::Dora, 2, 128, false, 0.0),
        (Method::Dora, 2, 128, false, 0.05),
        (Method::Dora, 4, 128, true, 0.0),
        (Method::Dora, 4, 128, true, 0.05),
        (Method::Dora, 1, 200, false, 0.0),
        (Method::Lora, 2, 128, false, 0.0),
        (Method::Lora, 2, 128, false, 0.05),
    ] {
        let examples = random_examples_of_lengths(384, batch, seq..=seq, 5);
        let config = TrainConfig {
            method,
            batch_size: batch,
            max_seq_len: seq,
            grad_checkpoint,
            dropout,
            iters: 2,
            steps_per_eval: 0,
            save_every: 0,
            ..TrainConfig::default()
        };
        let mut t = Trainer::new(own_tiny_llama(), config, examples, Vec::new()).unwrap();
        let estimate = t.memory_estimate().total() as f64;
        let measured = (0..2)
            .map(|_| t.train_step().unwrap().peak_live_bytes)
            .max()
            .unwrap() as f64;
        let ratio = estimate / measured;
        eprintln!("{method:?} batch {batch} × {seq}, checkpoint {grad_checkpoint}, dropout {dropout}: estimate {:.2} MB, measured {:.2} MB ({ratio:.2})", estimate / 1e6, measured / 1e6);
        ratios.push(ratio);
    }
    assert!(
        ratios.iter().all(|r| (1.0..1.6).contains(r)),
        "estimate/measured: {ratios:?}"
    );
}

/// A run whose step cannot fit the memory limit fails before its first step,
/// in one line, with the estimate and settings that would fit.
#[test]
fn a_step_over_the_memory_limit_is_refused_naming_what_would_fit() {
    let model = own_tiny_llama();
    model
        .embed_tokens
        .gpu()
        .set_memory_limits(dora_wgpu::PoolLimits {
            max_bytes: Some(12_000_000),
            ..Default::default()
        });
    let examples = random_examples_of_lengths(384, 4, 128..=128, 6);
    let config = TrainConfig {
        batch_size: 4,
        max_seq_len: 128,
        iters: 1,
        ..TrainConfig::default()
    };
    let err = match Trainer::new(model, config, examples, Vec::new()) {
        Ok(_) => panic!("a step over the limit must be refused"),
        Err(e) => e.to_string(),
    };
    assert_eq!(err.lines().count(), 1, "{err}");
    for needle in [
        "batch 4 × 128 tokens needs about",
        "the GPU memory limit is 12.0 MB",
        "--batch-size 2 (with --grad-accum 2)",
        "--max-seq-len 64",
    ] {
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    }
}
