//! [`TrainConfig`]: every setting of a fine-tuning run, its defaults and
//! their validation.

use serde::{Deserialize, Serialize};

use super::Schedule;
use crate::error::{arg_err, Result};
use crate::nn::{projections, AdapterOptions, Llama, FUSED_PROJECTIONS, PROJECTIONS};
use crate::optim::AdamWConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Dora,
    Lora,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Method, String> {
        match s {
            "dora" => Ok(Method::Dora),
            "lora" => Ok(Method::Lora),
            _ => Err(format!("unknown method {s:?}; expected dora or lora")),
        }
    }
}

/// Every setting of a fine-tuning run. The defaults are PEFT's and MLX-LM's
/// usual ones: DoRA, r 8, alpha 16, all seven projections, AdamW.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub method: Method,
    pub rank: usize,
    pub alpha: f32,
    pub dropout: f32,
    pub rslora: bool,
    /// Projection names (q_proj … down_proj); empty means all seven.
    pub targets: Vec<String>,
    /// Adapt only the last this-many decoder layers; `None` adapts all.
    pub num_layers: Option<usize>,
    /// Optimizer steps.
    pub iters: usize,
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub max_seq_len: usize,
    pub lr: f32,
    pub schedule: Schedule,
    pub warmup: usize,
    pub weight_decay: f32,
    /// Maximum global gradient norm; 0 turns clipping off.
    pub grad_clip: f32,
    pub seed: u64,
    /// Validate every this-many steps (and before the first and after the
    /// last); 0 never.
    pub steps_per_eval: usize,
    /// Validation batches per evaluation; 0 uses the whole validation set.
    pub val_batches: usize,
    /// Checkpoint every this-many steps (and always at the end); 0 only at the end.
    pub save_every: usize,
    /// Reshuffle the training examples every epoch.
    pub shuffle: bool,
    /// Recompute each decoder layer during backward instead of keeping its
    /// activations (`--grad-checkpoint`): less memory, about a third more time.
    #[serde(default)]
    pub grad_checkpoint: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            method: Method::Dora,
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            rslora: false,
            targets: Vec::new(),
            num_layers: None,
            iters: 1000,
            batch_size: 4,
            grad_accum: 1,
            max_seq_len: 2048,
            lr: 2e-4,
            schedule: Schedule::Constant,
            warmup: 0,
            weight_decay: 0.0,
            grad_clip: 1.0,
            seed: 0,
            steps_per_eval: 100,
            val_batches: 25,
            save_every: 100,
            shuffle: true,
            grad_checkpoint: false,
        }
    }
}

impl TrainConfig {
    /// Checks every setting, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            arg_err!("--rank must be at least 1");
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            arg_err!("--alpha must be a positive number, got {}", self.alpha);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            arg_err!("--dropout must be in [0, 1), got {}", self.dropout);
        }
        // The model checks its own names; here only that a name is one of any family.
        let known = || {
            PROJECTIONS
                .iter()
                .chain(&FUSED_PROJECTIONS)
                .map(|(_, n)| *n)
        };
        for t in &self.targets {
            if !known().any(|name| name == t) {
                let names: Vec<&str> = known().collect();
                arg_err!(
                    "--targets: unknown module {t:?}; expected some of {}",
                    names.join(" ")
                );
            }
        }
        if self.num_layers == Some(0) {
            arg_err!("--num-layers must be at least 1");
        }
        for (name, v) in [
            ("--iters", self.iters),
            ("--batch-size", self.batch_size),
            ("--grad-accum", self.grad_accum),
        ] {
            if v == 0 {
                arg_err!("{name} must be at least 1");
            }
        }
        if self.max_seq_len < 2 {
            arg_err!("--max-seq-len must be at least 2 tokens");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            arg_err!("--lr must be a positive number, got {}", self.lr);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            arg_err!("--weight-decay must be ≥ 0, got {}", self.weight_decay);
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            arg_err!(
                "--grad-clip must be ≥ 0 (0 turns it off), got {}",
                self.grad_clip
            );
        }
        Ok(())
    }

    /// The settings that shape the adapter and the optimisation; a resumed
    /// run must agree with its checkpoint on them.
    pub(super) fn resume_key(&self) -> TrainConfig {
        TrainConfig {
            iters: 0,
            steps_per_eval: 0,
            val_batches: 0,
            save_every: 0,
            grad_checkpoint: false,
            ..self.clone()
        }
    }

    pub(super) fn adapter_options(&self) -> AdapterOptions {
        AdapterOptions {
            rank: self.rank,
            alpha: self.alpha,
            use_rslora: self.rslora,
            dropout: self.dropout,
        }
    }

    /// The modules to adapt: those given, or all of the model's.
    pub(super) fn target_names(&self, model: &Llama) -> Vec<&str> {
        if self.targets.is_empty() {
            projections(&model.config).iter().map(|(_, n)| *n).collect()
        } else {
            self.targets.iter().map(String::as_str).collect()
        }
    }

    /// The layers that get adapters, for a model with `total` layers.
    pub(super) fn layer_range(&self, total: usize) -> std::ops::Range<usize> {
        let n = self.num_layers.unwrap_or(total);
        total - n..total
    }
}

/// The optimizer settings of a run (its other AdamW settings are the defaults).
pub(super) fn adamw_config(c: &TrainConfig) -> AdamWConfig {
    AdamWConfig {
        lr: c.lr,
        weight_decay: c.weight_decay,
        ..Default::default()
    }
}

/// The first setting in which two configs differ, e.g. `rank 8 vs 16`.
pub(super) fn describe_difference(saved: &TrainConfig, now: &TrainConfig) -> String {
    let (a, b) = (
        serde_json::to_value(saved.resume_key()).expect("serializes"),
        serde_json::to_value(now.resume_key()).expect("serializes"),
    );
    if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
        for (k, va) in a {
            if b.get(k) != Some(va) {
                return format!(
                    "{k}: {va} in the checkpoint, {} now",
                    b.get(k).unwrap_or(&serde_json::Value::Null)
                );
            }
        }
    }
    "settings differ".into()
}
