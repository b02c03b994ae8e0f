//! What a run writes beside its adapter: `metrics.jsonl` (a [`StepStats`]
//! line per step, a validation line per evaluation) and the loss plot.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

/// File names the trainer writes into its output (adapter) directory.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// `loss.png` and `loss.svg`: training loss, its moving average and validation loss.
pub const LOSS_PLOT_STEM: &str = "loss";

/// Steps in the moving average of the loss plot.
const LOSS_AVERAGE_WINDOW: usize = 10;

/// What one optimizer step did: [`Trainer::train_step`](super::Trainer::train_step)'s
/// report, and one line of metrics.jsonl.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepStats {
    /// Steps done after this one (1-based).
    pub step: usize,
    pub iters: usize,
    /// Mean of the micro-batches' losses (each a mean over its scored tokens).
    pub loss: f32,
    pub lr: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Real (non-padding) tokens in this step.
    pub tokens: usize,
    /// Tokens per second over this run's steps so far (validation excluded).
    pub tokens_per_s: f64,
    /// Seconds of training steps in this run so far.
    pub train_s: f64,
    /// Estimated seconds to the last step.
    pub eta_s: f64,
    /// Most bytes the GPU buffer pool held during this step (tensors' and idle).
    pub peak_gpu_bytes: u64,
    /// Most bytes tensors held at once during this step.
    pub peak_live_bytes: u64,
    /// Bytes tensors hold after the step (weights, adapter, optimizer state).
    pub live_bytes: u64,
}

/// `metrics.jsonl`: one JSON object per line, appended and flushed as it comes,
/// so a crash loses at most the line being written.
pub(super) struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    pub(super) fn open(dir: &Path) -> Result<MetricsLog> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join(METRICS_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| Error::Io {
                path: path.display().to_string(),
                source,
            })?;
        Ok(MetricsLog { path, file })
    }

    pub(super) fn write(&mut self, value: &serde_json::Value) -> Result<()> {
        use std::io::Write;
        writeln!(self.file, "{value}").map_err(|source| Error::Io {
            path: self.path.display().to_string(),
            source,
        })
    }
}

/// (step, loss) points in step order.
pub(super) type History = Vec<(usize, f64)>;

/// Draws `loss.png`/`loss.svg` in `out` from (step, loss) of the training
/// steps and of the evaluations; each file is replaced atomically.
pub(super) fn draw_loss_plot(
    out: &Path,
    loss_history: &[(usize, f64)],
    val_history: &[(usize, f64)],
) -> Result<()> {
    let mut chart = crate::plot::Chart::new("Training loss", "step", "loss");
    if !loss_history.is_empty() {
        chart = chart
            .with(crate::plot::Series::line("train", as_points(loss_history)))
            .with(crate::plot::Series::line(
                format!("train ({LOSS_AVERAGE_WINDOW}-step average)"),
                moving_average(loss_history, LOSS_AVERAGE_WINDOW),
            ));
    }
    if !val_history.is_empty() {
        chart = chart.with(crate::plot::Series::line(
            "validation",
            as_points(val_history),
        ));
    }
    chart.save(&out.join(LOSS_PLOT_STEM))
}

/// (step, loss) of the training steps and (step, validation loss) of the
/// evaluations up to step `up_to`, read back from `out`'s metrics.jsonl
/// (lines past it, written by a run that then crashed, are ignored; a later
/// line for a step replaces an earlier one). Empty without the file.
pub(super) fn read_history(out: &Path, up_to: usize) -> (History, History) {
    let (mut losses, mut validation) = (Vec::new(), Vec::new());
    let Ok(text) = std::fs::read_to_string(out.join(METRICS_FILE)) else {
        return (losses, validation);
    };
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(step) = v["step"].as_u64().map(|s| s as usize) else {
            continue;
        };
        if step > up_to {
            continue;
        }
        if let Some(loss) = v["loss"].as_f64() {
            losses.retain(|&(s, _)| s != step);
            losses.push((step, loss));
        }
        if let Some(loss) = v["val_loss"].as_f64() {
            validation.retain(|&(s, _)| s != step);
            validation.push((step, loss));
        }
    }
    (losses, validation)
}

fn as_points(history: &[(usize, f64)]) -> Vec<(f64, f64)> {
    history.iter().map(|&(s, v)| (s as f64, v)).collect()
}

/// Trailing mean over up to `window` points.
fn moving_average(points: &[(usize, f64)], window: usize) -> Vec<(f64, f64)> {
    (0..points.len())
        .map(|i| {
            let from = (i + 1).saturating_sub(window);
            let part = &points[from..=i];
            let mean = part.iter().map(|p| p.1).sum::<f64>() / part.len() as f64;
            (points[i].0 as f64, mean)
        })
        .collect()
}
