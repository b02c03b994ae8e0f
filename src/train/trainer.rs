//! The [`Trainer`]: adapters on a model, the optimizer step over
//! micro-batches, validation, checkpoints, resume and the run loop.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::checkpoint::{self, TrainerState};
use super::config::{adamw_config, describe_difference, Method, TrainConfig};
use super::metrics::{self, MetricsLog, StepStats};
use super::{estimate_step_memory, format_bytes, learning_rate, prepare};
use super::{Batch, Batcher, MemoryEstimate, PrepareReport, StepShape};
use crate::autograd::no_grad;
use crate::error::{arg_err, Error, Result};
use crate::io::hf::CAUSAL_LM;
use crate::io::{AdapterConfig, AdapterWeights, TargetModules};
use crate::nn::{decoder_targets_regex, Llama};
use crate::ops;
use crate::optim::AdamW;
use crate::tensor::Tensor;
use crate::text::data::Example;

/// Checkpoints kept, the newest included (older ones are deleted).
const KEEP_CHECKPOINTS: usize = 3;

/// Logits elements per chunk of the LM-head loss: bounds its [rows, vocab] buffer (32 MB).
const LOSS_CHUNK_ELEMENTS: usize = 1 << 23;

/// Progress reported to the callback of [`Trainer::run`].
#[derive(Debug)]
pub enum Event<'a> {
    Step(&'a StepStats),
    Validation {
        step: usize,
        loss: f64,
        tokens: usize,
    },
    Saved {
        step: usize,
        dir: &'a Path,
    },
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Stop {
    Finished,
    /// Cancelled through [`Trainer::cancel_flag`] or the callback; a checkpoint was saved.
    Cancelled,
}

#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    pub stop: Stop,
    pub step: usize,
    /// (step, validation loss) of every evaluation in this run.
    pub validation: Vec<(usize, f64)>,
    pub losses: Vec<f32>,
    pub train_s: f64,
    pub tokens: usize,
    /// Most bytes the GPU buffer pool held during any step of this run.
    pub peak_gpu_bytes: u64,
    /// Most bytes tensors held at once during any step of this run.
    pub peak_live_bytes: u64,
    pub checkpoint: Option<PathBuf>,
}

/// A fine-tuning run over one model, one training set and one validation set.
pub struct Trainer {
    model: Llama,
    /// What one step is estimated to hold on the GPU (checked against the limits).
    memory: MemoryEstimate,
    config: TrainConfig,
    adapter_config: AdapterConfig,
    batcher: Batcher,
    valid: Vec<Example>,
    optimizer: AdamW,
    param_names: Vec<String>,
    out_dir: Option<PathBuf>,
    cancel: Arc<AtomicBool>,
    prepare_report: PrepareReport,
    data_fingerprint: String,
    step: usize,
    last_checkpoint: Option<(usize, PathBuf)>,
    /// (step, loss) of every step and (step, validation loss) of every
    /// evaluation, including those before a resume (read back from metrics.jsonl).
    loss_history: Vec<(usize, f64)>,
    val_history: Vec<(usize, f64)>,
    /// Timing of this run's steps, for tokens/s and the ETA.
    run_tokens: usize,
    run_steps: usize,
    run_train_s: f64,
}

impl Trainer {
    /// Puts fresh adapters (B = 0, so training starts from the base model) on
    /// the projections `config` names and prepares the data.
    pub fn new(
        mut model: Llama,
        config: TrainConfig,
        train: Vec<Example>,
        valid: Vec<Example>,
    ) -> Result<Trainer> {
        config.validate()?;
        if !model.parameters().is_empty() {
            arg_err!("the model already carries adapters; use Trainer::with_adapter to continue training them");
        }
        let total = model.layers.len();
        if let Some(n) = config.num_layers.filter(|&n| n > total) {
            arg_err!("--num-layers {n} exceeds the model's {total} layers");
        }
        let layers = config.layer_range(total);
        model.add_adapters_to_layers(
            &config.adapter_options(),
            config.method == Method::Dora,
            &config.target_names(&model),
            layers.clone(),
            config.seed,
        )?;
        let mut adapter_config = AdapterConfig::new(
            config.rank,
            config.alpha,
            config.method == Method::Dora,
            &config.target_names(&model),
        );
        adapter_config.use_rslora = config.rslora;
        adapter_config.lora_dropout = config.dropout;
        adapter_config.task_type = Some("CAUSAL_LM".into());
        if model.config.decoder_prefix != CAUSAL_LM {
            // A multimodal model: name the language model's modules only.
            adapter_config.target_modules = TargetModules::Regex(decoder_targets_regex(
                &model.config,
                &config.target_names(&model),
                layers,
            ));
        } else if layers.len() != model.layers.len() {
            adapter_config.other.insert(
                "layers_to_transform".into(),
                layers.collect::<Vec<_>>().into(),
            );
        }
        Self::build(model, config, adapter_config, train, valid)
    }

    /// Continues training an existing PEFT adapter (its rank, alpha, targets
    /// and dropout replace those of `config`).
    pub fn with_adapter(
        mut model: Llama,
        adapter: &AdapterWeights,
        mut config: TrainConfig,
        train: Vec<Example>,
        valid: Vec<Example>,
    ) -> Result<Trainer> {
        if !model.parameters().is_empty() {
            arg_err!("the model already carries adapters");
        }
        model.attach_adapter(adapter)?;
        let c = &adapter.config;
        config.method = if c.use_dora {
            Method::Dora
        } else {
            Method::Lora
        };
        config.rank = c.r;
        config.alpha = c.lora_alpha;
        config.rslora = c.use_rslora;
        config.dropout = c.lora_dropout;
        config.validate()?;
        Self::build(model, config, adapter.config.clone(), train, valid)
    }

    fn build(
        mut model: Llama,
        config: TrainConfig,
        adapter_config: AdapterConfig,
        train: Vec<Example>,
        valid: Vec<Example>,
    ) -> Result<Trainer> {
        for (split, examples) in [("training", &train), ("validation", &valid)] {
            for (i, ex) in examples.iter().enumerate() {
                model.check_token_ids(&format!("{split} example {}", i + 1), &ex.ids)?;
            }
        }
        let (train, prepare_report) = prepare(train, config.max_seq_len);
        if train.is_empty() {
            arg_err!("no training example has a token to learn from (after truncation to --max-seq-len {})", config.max_seq_len);
        }
        let (valid, _) = prepare(valid, config.max_seq_len);
        let longest = train.iter().map(|e| e.ids.len()).max().unwrap_or(1);
        model.grad_checkpoint = config.grad_checkpoint;
        let memory = check_step_memory(&model, &config, longest)?;
        let data_fingerprint = fingerprint(&train);
        let named = model.named_parameters();
        let param_names = named.iter().map(|(n, _)| n.clone()).collect();
        let optimizer = AdamW::new(
            named.into_iter().map(|(_, t)| t).collect(),
            adamw_config(&config),
        )?;
        let batcher = Batcher::new(train, config.batch_size, config.shuffle, config.seed);
        Ok(Trainer {
            memory,
            model,
            config,
            adapter_config,
            batcher,
            valid,
            optimizer,
            param_names,
            out_dir: None,
            cancel: Arc::new(AtomicBool::new(false)),
            prepare_report,
            data_fingerprint,
            step: 0,
            last_checkpoint: None,
            loss_history: Vec::new(),
            val_history: Vec::new(),
            run_tokens: 0,
            run_steps: 0,
            run_train_s: 0.0,
        })
    }

    /// Writes checkpoints, the final adapter and `metrics.jsonl` into `dir`.
    pub fn with_output_dir(mut self, dir: impl Into<PathBuf>) -> Trainer {
        self.out_dir = Some(dir.into());
        self
    }

    /// Restores adapter, AdamW state, step and data position from a
    /// checkpoint directory written by this trainer.
    pub fn resume(&mut self, checkpoint_dir: &Path) -> Result<()> {
        let ckpt = checkpoint::load(checkpoint_dir)?;
        let s = &ckpt.state;
        let at = checkpoint_dir.display();
        if s.config.resume_key() != self.config.resume_key() {
            return Err(Error::InvalidArgument(format!(
                "{at}: the checkpoint was trained with other settings ({}); resume with the same ones",
                describe_difference(&s.config, &self.config)
            )));
        }
        if s.train_examples != self.batcher.len() || s.data_fingerprint != self.data_fingerprint {
            return Err(Error::InvalidArgument(format!(
                "{at}: the checkpoint was trained on other data ({} examples, fingerprint {}; now {} examples, {})",
                s.train_examples, s.data_fingerprint, self.batcher.len(), self.data_fingerprint
            )));
        }
        // Fresh adapter modules from the checkpoint's values, then the optimizer over them.
        for layer in &mut self.model.layers {
            for p in &mut layer.projections {
                *p = crate::nn::Projection::Frozen(p.base().clone());
            }
        }
        self.model.attach_adapter(&ckpt.adapter)?;
        let named = self.model.named_parameters();
        let gpu = self.model.embed_tokens.gpu().clone();
        let mut moments = Vec::with_capacity(named.len());
        for (name, p) in &named {
            let (m, v) = ckpt.moments.get(name).ok_or_else(|| Error::Format {
                path: checkpoint_dir.display().to_string(),
                message: format!("optimizer state for {name} is missing"),
            })?;
            if m.shape != p.shape() || v.shape != p.shape() {
                return Err(Error::Format {
                    path: checkpoint_dir.display().to_string(),
                    message: format!(
                        "optimizer state for {name} has shape {:?}, the parameter {:?}",
                        m.shape,
                        p.shape()
                    ),
                });
            }
            moments.push((m.to_gpu(&gpu)?, v.to_gpu(&gpu)?));
        }
        self.param_names = named.iter().map(|(n, _)| n.clone()).collect();
        self.optimizer = AdamW::new(
            named.into_iter().map(|(_, t)| t).collect(),
            adamw_config(&self.config),
        )?;
        self.optimizer.load_state(s.step, moments)?;
        self.batcher.set_position(s.data_position);
        self.step = s.step as usize;
        self.last_checkpoint = Some((self.step, checkpoint_dir.to_path_buf()));
        self.read_history();
        Ok(())
    }

    /// Set it (from any thread, e.g. a Ctrl-C handler) to stop [`Trainer::run`]
    /// after the current step; the run then saves a checkpoint.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    pub fn model(&self) -> &Llama {
        &self.model
    }

    pub fn into_model(self) -> Llama {
        self.model
    }

    /// Optimizer steps taken (including those before a resume).
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// The GPU memory one step is estimated to need (checked when the
    /// trainer was made against `GpuOptions::memory` and the adapter's limits).
    pub fn memory_estimate(&self) -> MemoryEstimate {
        self.memory
    }

    /// Examples truncated or dropped while preparing the training data.
    pub fn prepare_report(&self) -> PrepareReport {
        self.prepare_report
    }

    pub fn train_examples(&self) -> usize {
        self.batcher.len()
    }

    pub fn valid_examples(&self) -> usize {
        self.valid.len()
    }

    /// The adapters' current values as a PEFT adapter.
    pub fn adapter(&self) -> Result<AdapterWeights> {
        self.model.adapter_weights(self.adapter_config.clone())
    }

    /// The trainable parameters with their names, and their AdamW moments.
    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// One optimizer step over `grad_accum` micro-batches. A non-finite loss
    /// or gradient stops with an error before the update is applied.
    pub fn train_step(&mut self) -> Result<StepStats> {
        let started = Instant::now();
        let c = &self.config;
        let hidden_size = self.model.config.hidden_size;
        let gpu = self.model.head().gpu().clone();
        gpu.reset_peak_memory();
        let chunk_rows = loss_chunk_rows(&self.model);
        let mut losses = Vec::with_capacity(c.grad_accum);
        let mut tokens = 0;
        for _ in 0..c.grad_accum {
            let seed = dropout_seed(c.seed, self.batcher.position());
            let batch = self
                .batcher
                .next_batch()
                .expect("the training set is not empty");
            tokens += batch.tokens;
            let ids = Tensor::from_i32(&gpu, &batch.ids, &[batch.batch, batch.seq])?;
            let hidden = self.model.forward_hidden_train(&ids, seed)?;
            let hidden = ops::reshape(&hidden, &[batch.batch * batch.seq, hidden_size])?;
            let loss = self.model.loss(&hidden, &batch.targets, chunk_rows)?;
            // Each micro-batch counts 1/grad_accum, as in transformers' Trainer.
            if c.grad_accum > 1 {
                ops::scale(&loss, 1.0 / c.grad_accum as f32)?.backward()?;
            } else {
                loss.backward()?;
            }
            losses.push(loss.detach());
        }
        let grads: Vec<Tensor> = self
            .optimizer
            .params()
            .iter()
            .filter_map(Tensor::grad)
            .collect();
        let grad_norm = ops::global_norm(&grads)?.item()?;
        let mut loss = 0.0;
        for l in &losses {
            loss += l.item()? / losses.len() as f32;
        }
        let next = self.step + 1;
        if !loss.is_finite() || !grad_norm.is_finite() {
            self.optimizer.zero_grad();
            let what = if loss.is_finite() {
                format!("the gradient norm is {grad_norm}")
            } else {
                format!("the loss is {loss}")
            };
            let kept = match &self.last_checkpoint {
                Some((s, dir)) => {
                    format!("the last good checkpoint is {} (step {s})", dir.display())
                }
                None => "no checkpoint was saved before it".into(),
            };
            return Err(Error::Training(format!(
                "step {next}: {what}; stopped without applying it ({kept}); try a lower --lr"
            )));
        }
        let lr = learning_rate(c.schedule, c.lr, self.step, c.warmup, c.iters);
        // torch.nn.utils.clip_grad_norm_: scale by max/(norm + 1e-6), never up.
        let clip = if c.grad_clip > 0.0 {
            (c.grad_clip / (grad_norm + 1e-6)).min(1.0)
        } else {
            1.0
        };
        self.optimizer.config.lr = lr;
        self.optimizer.step_scaled(clip)?;
        self.optimizer.zero_grad();
        self.step = next;
        let secs = started.elapsed().as_secs_f64();
        self.run_steps += 1;
        self.run_tokens += tokens;
        self.run_train_s += secs;
        let per_step = self.run_train_s / self.run_steps as f64;
        let memory = gpu.memory_stats();
        Ok(StepStats {
            step: self.step,
            iters: self.config.iters,
            loss,
            lr,
            grad_norm,
            tokens,
            tokens_per_s: self.run_tokens as f64 / self.run_train_s.max(1e-9),
            train_s: self.run_train_s,
            eta_s: per_step * self.config.iters.saturating_sub(self.step) as f64,
            peak_gpu_bytes: memory.peak_allocated_bytes,
            peak_live_bytes: memory.peak_live_bytes,
            live_bytes: memory.live_bytes,
        })
    }

    /// Token-weighted mean loss over the first `val_batches` batches of the
    /// validation set (all of it when 0), and the tokens scored; `None`
    /// without validation data.
    pub fn validate(&self) -> Result<Option<(f64, usize)>> {
        if self.valid.is_empty() {
            return Ok(None);
        }
        let _g = no_grad();
        let gpu = self.model.embed_tokens.gpu();
        let hidden_size = self.model.config.hidden_size;
        let chunk_rows = loss_chunk_rows(&self.model);
        let mut batches = self.valid.chunks(self.config.batch_size);
        let limit = match self.config.val_batches {
            0 => usize::MAX,
            n => n,
        };
        let (mut total, mut tokens) = (0.0, 0);
        for group in batches.by_ref().take(limit) {
            let refs: Vec<&Example> = group.iter().collect();
            let b = Batch::from_examples(&refs);
            let ids = Tensor::from_i32(gpu, &b.ids, &[b.batch, b.seq])?;
            let hidden = ops::reshape(
                &self.model.forward_hidden(&ids, None)?,
                &[b.batch * b.seq, hidden_size],
            )?;
            let (nll, n) = self.model.nll_sum(&hidden, &b.targets, chunk_rows)?;
            total += nll;
            tokens += n;
        }
        Ok(Some((total / tokens.max(1) as f64, tokens)))
    }

    /// Writes a checkpoint of the current state and the adapter itself at the
    /// top of the output directory; returns the checkpoint directory.
    pub fn save(&mut self) -> Result<PathBuf> {
        let Some(out) = self.out_dir.clone() else {
            arg_err!("the trainer has no output directory (Trainer::with_output_dir)");
        };
        let adapter = self.adapter()?;
        let moments: Vec<(String, Tensor, Tensor)> = self
            .param_names
            .iter()
            .zip(self.optimizer.moments())
            .map(|(n, (m, v))| (n.clone(), m.clone(), v.clone()))
            .collect();
        let state = TrainerState {
            step: self.step as u64,
            data_position: self.batcher.position(),
            config: self.config.clone(),
            train_examples: self.batcher.len(),
            data_fingerprint: self.data_fingerprint.clone(),
        };
        let dir = checkpoint::stage(&out, &adapter, &moments, &state)?.commit()?;
        // The adapter at the top is what users load; each file is replaced atomically.
        adapter.save(&out)?;
        checkpoint::prune(&out, KEEP_CHECKPOINTS);
        // The downloads for the checkpoint left staging-sized buffers behind.
        self.model.embed_tokens.gpu().trim_memory();
        self.last_checkpoint = Some((self.step, dir.clone()));
        Ok(dir)
    }

    /// Trains to `config.iters` steps, validating and saving as configured,
    /// and calls `on_event` after every step, validation and save; returning
    /// `ControlFlow::Break` from it cancels the run like the cancel flag does.
    /// A cancelled run saves a checkpoint before returning.
    pub fn run(
        &mut self,
        mut on_event: impl FnMut(Event) -> ControlFlow<()>,
    ) -> Result<TrainSummary> {
        let c = self.config.clone();
        let mut summary = TrainSummary {
            stop: Stop::Finished,
            step: self.step,
            validation: Vec::new(),
            losses: Vec::new(),
            train_s: 0.0,
            tokens: 0,
            peak_gpu_bytes: 0,
            peak_live_bytes: 0,
            checkpoint: None,
        };
        let mut metrics = self
            .out_dir
            .as_ref()
            .map(|d| MetricsLog::open(d))
            .transpose()?;
        let mut cancelled = false;
        if c.steps_per_eval > 0 && self.step == 0 {
            cancelled |= self.validate_and_report(&mut summary, &mut metrics, &mut on_event)?;
        }
        while self.step < c.iters && !cancelled {
            if self.cancel.load(Ordering::Relaxed) {
                cancelled = true;
                break;
            }
            let stats = self.train_step()?;
            self.loss_history.push((stats.step, stats.loss as f64));
            summary.losses.push(stats.loss);
            summary.train_s = stats.train_s;
            summary.tokens += stats.tokens;
            summary.peak_gpu_bytes = summary.peak_gpu_bytes.max(stats.peak_gpu_bytes);
            summary.peak_live_bytes = summary.peak_live_bytes.max(stats.peak_live_bytes);
            if let Some(m) = metrics.as_mut() {
                m.write(&serde_json::to_value(&stats).expect("plain numbers serialize"))?;
            }
            cancelled |= on_event(Event::Step(&stats)).is_break();
            let at_end = self.step == c.iters;
            if c.steps_per_eval > 0 && (self.step.is_multiple_of(c.steps_per_eval) || at_end) {
                cancelled |= self.validate_and_report(&mut summary, &mut metrics, &mut on_event)?;
            }
            if self.out_dir.is_some()
                && c.save_every > 0
                && self.step.is_multiple_of(c.save_every)
                && !at_end
            {
                let dir = self.save()?;
                cancelled |= on_event(Event::Saved {
                    step: self.step,
                    dir: &dir,
                })
                .is_break();
            }
        }
        cancelled |= self.cancel.load(Ordering::Relaxed) && self.step < c.iters;
        if cancelled {
            summary.stop = Stop::Cancelled;
        }
        if self.out_dir.is_some() {
            let already = matches!(&self.last_checkpoint, Some((s, _)) if *s == self.step);
            let dir = match (&self.last_checkpoint, already) {
                (Some((_, d)), true) => d.clone(),
                _ => {
                    let d = self.save()?;
                    let _ = on_event(Event::Saved {
                        step: self.step,
                        dir: &d,
                    });
                    d
                }
            };
            summary.checkpoint = Some(dir);
        }
        if self.out_dir.is_some() {
            self.draw_loss_plot()?;
        }
        summary.step = self.step;
        Ok(summary)
    }

    /// Redraws `loss.png`/`loss.svg` in the output directory (a user may have
    /// it open while training runs; each file is replaced atomically).
    fn draw_loss_plot(&self) -> Result<()> {
        match &self.out_dir {
            Some(out) => metrics::draw_loss_plot(out, &self.loss_history, &self.val_history),
            None => Ok(()),
        }
    }

    /// The loss history of the steps before a resume, from metrics.jsonl.
    fn read_history(&mut self) {
        (self.loss_history, self.val_history) = match &self.out_dir {
            Some(out) => metrics::read_history(out, self.step),
            None => Default::default(),
        };
    }
}

impl Trainer {
    /// Validates, logs and reports; true when the callback asks to stop.
    fn validate_and_report(
        &mut self,
        summary: &mut TrainSummary,
        metrics: &mut Option<MetricsLog>,
        on_event: &mut dyn FnMut(Event) -> ControlFlow<()>,
    ) -> Result<bool> {
        // Evaluation needs other buffer sizes than training: neither phase
        // keeps the other's idle buffers.
        let gpu = self.model.embed_tokens.gpu().clone();
        gpu.trim_memory();
        let validated = self.validate();
        gpu.trim_memory();
        let Some((loss, tokens)) = validated? else {
            return Ok(false);
        };
        summary.validation.push((self.step, loss));
        self.val_history.push((self.step, loss));
        self.draw_loss_plot()?;
        if let Some(m) = metrics.as_mut() {
            m.write(
                &serde_json::json!({"step": self.step, "val_loss": loss, "val_tokens": tokens}),
            )?;
        }
        Ok(on_event(Event::Validation {
            step: self.step,
            loss,
            tokens,
        })
        .is_break())
    }
}

/// Estimates a step's GPU memory for batches up to `longest` tokens and
/// refuses, before any step runs, one that would exceed the context's memory
/// limit or the adapter's largest buffer, naming settings that would fit.
fn check_step_memory(model: &Llama, c: &TrainConfig, longest: usize) -> Result<MemoryEstimate> {
    let gpu = model.embed_tokens.gpu();
    let resident = gpu.memory_stats().live_bytes;
    let trainable: usize = model.parameters().iter().map(|p| p.numel()).sum();
    let estimate = |batch: usize, seq_len: usize, grad_checkpoint: bool| {
        let shape = StepShape {
            batch,
            seq_len,
            grad_checkpoint,
            loss_chunk_rows: loss_chunk_rows(model),
            fused_attention: crate::ops::attention_is_fused(
                gpu,
                batch,
                model.config.num_attention_heads,
                seq_len,
                seq_len,
                model.config.head_dim,
            ),
        };
        estimate_step_memory(&model.config, &shape, resident, trainable)
    };
    let limits = gpu.limits();
    let per_buffer = limits
        .max_buffer_size
        .min(limits.max_storage_buffer_binding_size);
    let total_limit = gpu.memory_limits().max_bytes.unwrap_or(u64::MAX);
    let fits = |e: &MemoryEstimate| e.total() <= total_limit && e.largest_buffer <= per_buffer;
    let seq = longest.min(c.max_seq_len);
    let wanted = estimate(c.batch_size, seq, c.grad_checkpoint);
    if fits(&wanted) {
        return Ok(wanted);
    }
    // What would fit: checkpointing, then smaller batches, then shorter sequences.
    let mut options = Vec::new();
    if !c.grad_checkpoint && fits(&estimate(c.batch_size, seq, true)) {
        options.push("--grad-checkpoint".to_string());
    }
    let mut batch = c.batch_size / 2;
    while batch >= 1 && options.len() < 2 {
        if fits(&estimate(batch, seq, c.grad_checkpoint)) {
            options.push(format!(
                "--batch-size {batch} (with --grad-accum {})",
                c.grad_accum * c.batch_size / batch
            ));
            break;
        }
        batch /= 2;
    }
    let mut len = seq / 2;
    while len >= 16 && options.len() < 3 {
        if fits(&estimate(c.batch_size, len, c.grad_checkpoint)) {
            options.push(format!("--max-seq-len {len}"));
            break;
        }
        len /= 2;
    }
    let why = if wanted.largest_buffer > per_buffer {
        format!(
            "its largest buffer ({}) exceeds {}'s limit of {} per buffer",
            format_bytes(wanted.largest_buffer),
            gpu.adapter_name(),
            format_bytes(per_buffer)
        )
    } else {
        format!("the GPU memory limit is {}", format_bytes(total_limit))
    };
    let fit = if options.is_empty() {
        "no smaller batch or sequence length fits either".to_string()
    } else {
        format!("would fit with {}", options.join(", or "))
    };
    arg_err!(
        "a training step of batch {} × {seq} tokens needs about {} (weights {}, adapter and AdamW {}, activations {}) but {why}; it {fit}",
        c.batch_size,
        format_bytes(wanted.total()),
        format_bytes(wanted.resident),
        format_bytes(wanted.adapter_and_optimizer),
        format_bytes(wanted.activations)
    )
}

/// Rows per chunk of the LM-head loss, so a chunk's logits stay within
/// [`LOSS_CHUNK_ELEMENTS`] (training and validation alike).
fn loss_chunk_rows(model: &Llama) -> usize {
    (LOSS_CHUNK_ELEMENTS / model.config.vocab_size).max(1)
}

/// The dropout seed of the micro-batch at stream position `position`: fixed
/// by the data position, so a resumed run draws the same masks.
fn dropout_seed(seed: u64, position: u64) -> u32 {
    let mut rng = crate::nn::Rng::new(seed ^ position.wrapping_mul(0xD1B5_4A32_D192_ED03));
    rng.next_u64() as u32
}

/// FNV-1a over every example's ids and mask, as hex.
fn fingerprint(examples: &[Example]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |v: u64| {
        h ^= v;
        h = h.wrapping_mul(0x100_0000_01b3);
    };
    for e in examples {
        eat(e.ids.len() as u64);
        for (&id, &s) in e.ids.iter().zip(&e.scored) {
            eat(((id as u64) << 1) | s as u64);
        }
    }
    format!("{h:016x}")
}
