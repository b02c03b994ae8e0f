//! The benchmark's measurements: training throughput, merged against base
//! forward, GPU memory over a long run, host memory of a model load, and the
//! effective-FLOP convention the figures are reported in.

use std::time::Instant;

use dora_wgpu::text::data::{random_examples, random_examples_of_lengths};
use dora_wgpu::{Gpu, Result, Tensor};

/// The median of repeated timings (the upper middle for an even count).
pub fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// The median of the ratios a[i] / b[i] of timings taken side by side: on a
/// shared host that drifts by minutes, a ratio of neighbours is steadier than a
/// ratio of two medians.
pub fn paired_ratio(a: &[f64], b: &[f64]) -> f64 {
    median(a.iter().zip(b).map(|(x, y)| x / y).collect())
}

/// One fine-tuning configuration measured end to end.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainBench {
    pub model: String,
    pub method: String,
    pub batch: usize,
    pub seq_len: usize,
    /// Decoder layers recomputed during backward (`--grad-checkpoint`).
    pub grad_checkpoint: bool,
    /// Median over the timed steps.
    pub step_s: f64,
    /// Every timed step, in order.
    pub step_times_s: Vec<f64>,
    pub tokens_per_s: f64,
    /// Highest GPU memory held by live tensors during the steps (weights included).
    pub peak_gpu_bytes: u64,
    /// [`effective_flops_per_step`] / step time.
    pub effective_gflops: f64,
}

/// FLOPs a training step needs with a frozen base, the convention the
/// benchmark reports against the FMA peak: 4 × (projection + LM-head
/// parameters) × tokens (forward 2·P·T, backward to the activations 2·P·T; no
/// weight gradients), plus attention: per layer and sequence 4·T²·H forward
/// (QKᵀ and PV) and 8·T²·H backward. Adapters, norms and softmax are left out.
pub fn effective_flops_per_step(
    c: &dora_wgpu::io::hf::ModelConfig,
    batch: usize,
    seq: usize,
) -> f64 {
    let h = c.hidden_size as f64;
    let kv = (c.num_key_value_heads * c.head_dim) as f64;
    let q = (c.num_attention_heads * c.head_dim) as f64;
    let per_layer = h * q + 2.0 * h * kv + q * h + 3.0 * h * c.intermediate_size as f64;
    let body = per_layer * c.num_hidden_layers as f64;
    let head = (c.vocab_size * c.hidden_size) as f64;
    let tokens = (batch * seq) as f64;
    let attention = 12.0 * (seq * seq) as f64 * q * (batch * c.num_hidden_layers) as f64;
    4.0 * (body + head) * tokens + attention
}

/// The shape of a training measurement: random [batch, seq] batches,
/// `warmup` untimed steps (pipeline creation), then `steps` timed ones.
#[derive(Clone, Copy, Debug)]
pub struct TrainShape {
    pub batch: usize,
    pub seq: usize,
    pub warmup: usize,
    pub steps: usize,
    pub grad_checkpoint: bool,
}

/// Trains adapters (r 8, alpha 16, all seven projections) on the model in
/// `model_dir`, once per `(method, shape)` run, and reports each run's median
/// timed step. Each run gets its own GPU context, so its peak memory is its
/// own, and the runs' timed steps alternate: a slowdown of the host lands on
/// every run alike instead of on whichever ran during it, which keeps their
/// ratios honest on a shared machine.
pub fn train_throughputs(
    model_dir: &std::path::Path,
    model_name: &str,
    runs: &[(dora_wgpu::train::Method, TrainShape)],
) -> Result<Vec<TrainBench>> {
    use dora_wgpu::train::{TrainConfig, Trainer};
    let mut trainers = Vec::with_capacity(runs.len());
    for &(method, shape) in runs {
        let gpu = Gpu::new()?;
        let model = dora_wgpu::nn::Llama::load(&gpu, model_dir)?;
        let examples = random_examples(
            model.config.vocab_size,
            shape.batch * (shape.warmup + shape.steps).max(1),
            shape.seq,
            7,
        );
        let config = TrainConfig {
            method,
            iters: shape.warmup + shape.steps,
            batch_size: shape.batch,
            max_seq_len: shape.seq + 1,
            lr: 1e-4,
            steps_per_eval: 0,
            save_every: 0,
            grad_checkpoint: shape.grad_checkpoint,
            ..TrainConfig::default()
        };
        let mut trainer = Trainer::new(model, config, examples, Vec::new())?;
        for _ in 0..shape.warmup {
            trainer.train_step()?;
        }
        trainers.push((gpu, trainer, Vec::new()));
    }
    let steps = runs.iter().map(|(_, s)| s.steps.max(1)).max().unwrap_or(1);
    for step in 0..steps {
        for ((_, shape), (_, trainer, times)) in runs.iter().zip(&mut trainers) {
            if step < shape.steps.max(1) {
                let t = Instant::now();
                trainer.train_step()?; // reads the loss: the step has finished on the GPU
                times.push(t.elapsed().as_secs_f64());
            }
        }
    }
    let mut results = Vec::with_capacity(runs.len());
    for (&(method, shape), (gpu, trainer, times)) in runs.iter().zip(trainers) {
        let config = trainer.model().config.clone();
        let step_s = median(times.clone());
        results.push(TrainBench {
            model: model_name.to_string(),
            method: format!("{method:?}").to_lowercase(),
            batch: shape.batch,
            seq_len: shape.seq,
            grad_checkpoint: shape.grad_checkpoint,
            step_s,
            step_times_s: times,
            tokens_per_s: (shape.batch * shape.seq) as f64 / step_s,
            peak_gpu_bytes: gpu.memory_stats().peak_live_bytes,
            effective_gflops: effective_flops_per_step(&config, shape.batch, shape.seq)
                / step_s
                / 1e9,
        });
    }
    Ok(results)
}

/// Forward times (no gradients) of a base model, the same model with a DoRA
/// adapter merged into its weights, and with the adapter attached unmerged.
#[derive(Clone, Debug)]
pub struct ForwardTimes {
    /// Medians, in seconds.
    pub base_s: f64,
    pub merged_s: f64,
    pub unmerged_s: f64,
    /// [`paired_ratio`]s against the base, run by run.
    pub merged_ratio: f64,
    pub unmerged_ratio: f64,
}

/// Times the forward of the base model, the merged one and the unmerged one
/// on one random [batch, seq] batch, `repeats` rounds of all three; the order
/// within a round alternates so neither runs always first.
pub fn merged_forward_times(
    gpu: &Gpu,
    model_dir: &std::path::Path,
    batch: usize,
    seq: usize,
    repeats: usize,
) -> Result<ForwardTimes> {
    use dora_wgpu::nn::{AdapterOptions, Linear, Projection};
    let _g = dora_wgpu::no_grad();
    let base = dora_wgpu::nn::Llama::load(gpu, model_dir)?;
    // A trained adapter has B ≠ 0: start from fresh adapters, give B random
    // values and attach that to a second copy of the model.
    let mut fresh = dora_wgpu::nn::Llama::load(gpu, model_dir)?;
    let options = AdapterOptions {
        rank: 8,
        alpha: 16.0,
        ..Default::default()
    };
    fresh.add_adapters(&options, true, &[], 3)?;
    let all: Vec<&str> = dora_wgpu::nn::projections(&fresh.config)
        .iter()
        .map(|(_, n)| *n)
        .collect();
    let config = dora_wgpu::io::AdapterConfig::new(8, 16.0, true, &all);
    let mut adapter = fresh.adapter_weights(config)?;
    drop(fresh);
    let mut rng = dora_wgpu::nn::Rng::new(5);
    for m in adapter.modules.values_mut() {
        let b: Vec<f32> = (0..m.lora_b.numel())
            .map(|_| 0.01 * rng.uniform_in(-1.0, 1.0))
            .collect();
        m.lora_b = dora_wgpu::io::HostTensor::from_f32(&b, &m.lora_b.shape);
    }
    let mut adapted = dora_wgpu::nn::Llama::load(gpu, model_dir)?;
    adapted.attach_adapter(&adapter)?;
    let mut merged = dora_wgpu::nn::Llama::load(gpu, model_dir)?;
    for (layer, src) in merged.layers.iter_mut().zip(&adapted.layers) {
        for (slot, p) in layer.projections.iter_mut().zip(&src.projections) {
            *slot = Projection::Frozen(Linear::new(p.merged_weight()?, p.base().bias.clone())?);
        }
    }
    let ids: Vec<i32> = random_examples(base.config.vocab_size, batch, seq - 1, 9)
        .into_iter()
        .flat_map(|e| e.ids.into_iter().map(|i| i as i32))
        .collect();
    let ids = Tensor::from_i32(gpu, &ids, &[batch, seq])?;
    let run = |m: &dora_wgpu::nn::Llama| -> Result<f64> {
        let t = Instant::now();
        let h = m.forward_hidden(&ids, None)?;
        m.logits(&h)?;
        gpu.synchronize()?;
        Ok(t.elapsed().as_secs_f64())
    };
    for m in [&base, &merged, &adapted] {
        run(m)?; // pipelines
    }
    let (mut tb, mut tm, mut tu) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..repeats.max(1) {
        if round % 2 == 0 {
            tb.push(run(&base)?);
            tm.push(run(&merged)?);
            tu.push(run(&adapted)?);
        } else {
            tu.push(run(&adapted)?);
            tm.push(run(&merged)?);
            tb.push(run(&base)?);
        }
    }
    Ok(ForwardTimes {
        merged_ratio: paired_ratio(&tm, &tb),
        unmerged_ratio: paired_ratio(&tu, &tb),
        base_s: median(tb),
        merged_s: median(tm),
        unmerged_s: median(tu),
    })
}

/// GPU memory over a long run of varying sequence lengths.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemoryRun {
    pub model: String,
    pub method: String,
    pub steps: usize,
    pub batch: usize,
    pub max_seq_len: usize,
    pub dropout: f32,
    /// Most bytes the pool held in steps 1–10, and over the whole run.
    pub peak_allocated_by_step_10: u64,
    pub peak_allocated: u64,
    /// Most bytes tensors held at once over the whole run.
    pub peak_live: u64,
    /// The estimate the run was checked against before its first step.
    pub estimate: u64,
    /// `peak_allocated` / `peak_allocated_by_step_10` and / `peak_live`.
    pub growth_ratio: f64,
    pub allocated_live_ratio: f64,
}

/// Trains `steps` steps on random token sequences whose lengths vary from
/// an eighth of `max_seq_len` to all of it, as real data does, and reports
/// how the buffer pool's memory evolves.
pub fn memory_over_run(
    model_dir: &std::path::Path,
    model_name: &str,
    method: dora_wgpu::train::Method,
    steps: usize,
    batch: usize,
    max_seq_len: usize,
    dropout: f32,
) -> Result<MemoryRun> {
    use dora_wgpu::train::{TrainConfig, Trainer};
    let gpu = Gpu::new()?;
    let model = dora_wgpu::nn::Llama::load(&gpu, model_dir)?;
    let lengths = max_seq_len / 8..=max_seq_len - 1;
    let examples = random_examples_of_lengths(model.config.vocab_size, batch * 32, lengths, 21);
    let config = TrainConfig {
        method,
        iters: steps,
        batch_size: batch,
        max_seq_len,
        dropout,
        lr: 1e-4,
        steps_per_eval: 0,
        save_every: 0,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, config, examples, Vec::new())?;
    let estimate = trainer.memory_estimate().total();
    let (mut by_10, mut allocated, mut live) = (0, 0, 0);
    for step in 1..=steps {
        let s = trainer.train_step()?;
        allocated = allocated.max(s.peak_gpu_bytes);
        live = live.max(s.peak_live_bytes);
        if step <= 10 {
            by_10 = allocated;
        }
    }
    Ok(MemoryRun {
        model: model_name.to_string(),
        method: format!("{method:?}").to_lowercase(),
        steps,
        batch,
        max_seq_len,
        dropout,
        peak_allocated_by_step_10: by_10,
        peak_allocated: allocated,
        peak_live: live,
        estimate,
        growth_ratio: allocated as f64 / by_10.max(1) as f64,
        allocated_live_ratio: allocated as f64 / live.max(1) as f64,
    })
}

/// Host memory a model load takes: the peak growth of the process's
/// anonymous resident memory (Linux `RssAnon`, sampled every millisecond;
/// mapped file pages are not anonymous) while `load` runs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HostLoadMemory {
    pub what: String,
    pub peak_anon_growth_bytes: u64,
    pub largest_tensor_bytes: u64,
    pub weight_file_bytes: u64,
}

fn anon_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Runs `load` while sampling the anonymous RSS; None where the platform
/// does not report it.
pub fn host_memory_while<T>(
    what: &str,
    model_dir: &std::path::Path,
    load: impl FnOnce() -> Result<T>,
) -> Result<Option<(HostLoadMemory, T)>> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let Some(before) = anon_rss_bytes() else {
        return Ok(None);
    };
    let largest = {
        let mapped = dora_wgpu::io::hf::MappedWeights::open(model_dir)?;
        let sizes = mapped
            .names()
            .filter_map(|n| mapped.get(n).map(|t| t.bytes.len()));
        sizes.max().unwrap_or(0) as u64
    };
    let files: u64 = std::fs::read_dir(model_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .sum();
    let done = AtomicBool::new(false);
    let peak = AtomicU64::new(before);
    let value = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if let Some(now) = anon_rss_bytes() {
                    peak.fetch_max(now, Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        });
        let value = load();
        done.store(true, Ordering::Relaxed);
        value
    })?;
    let report = HostLoadMemory {
        what: what.to_string(),
        peak_anon_growth_bytes: peak.load(Ordering::Relaxed).saturating_sub(before),
        largest_tensor_bytes: largest,
        weight_file_bytes: files,
    };
    Ok(Some((report, value)))
}
