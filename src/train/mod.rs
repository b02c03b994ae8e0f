//! Fine-tuning: a [`Trainer`] runs AdamW steps of LoRA/DoRA adapters on a
//! [`Llama`](crate::nn::Llama), with gradient accumulation, clipping, a
//! warmup/cosine schedule, periodic validation, metrics, atomic PEFT-format
//! checkpoints and exact resume. The CLI's `train` command is a thin layer over it; applications
//! drive it with a callback and can cancel it from another thread.
//!
//! One optimizer step records every micro-batch's forward and backward, the
//! gradient norm and the AdamW update without waiting on the GPU; the host
//! waits once per step, to read the loss and gradient norm (the NaN guard and
//! clipping need them).
//!
//! [`TrainConfig`] and its validation live in `config.rs`, the [`Trainer`]
//! and its loop in `trainer.rs`, `metrics.jsonl` and the loss plot in
//! `metrics.rs`; every public item is re-exported here.

mod batches;
pub mod checkpoint;
mod config;
mod memory;
mod metrics;
mod schedule;
mod trainer;

pub use batches::{prepare, Batch, Batcher, PrepareReport};
pub use checkpoint::{Checkpoint, TrainerState};
pub use config::{Method, TrainConfig};
pub use memory::{estimate_step_memory, format_bytes, MemoryEstimate, StepShape};
pub use metrics::{StepStats, LOSS_PLOT_STEM, METRICS_FILE};
pub use schedule::{learning_rate, Schedule};
pub use trainer::{Event, Stop, TrainSummary, Trainer};
