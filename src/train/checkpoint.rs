//! Training checkpoints: `<adapter dir>/checkpoints/step-NNNNNN/` holds a PEFT
//! adapter (`adapter_config.json`, `adapter_model.safetensors`), the AdamW
//! moments (`optimizer.safetensors`) and `trainer_state.json` (step, data
//! position, settings). A checkpoint is written into a hidden temporary
//! directory and renamed into place in one step, so a crash leaves either the
//! whole new checkpoint or none of it; the previous one is never touched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TrainConfig;
use crate::error::{Error, Result};
use crate::io::{
    read_safetensors, unique_suffix, write_atomically, write_safetensors, AdapterWeights,
    HostTensor,
};
use crate::tensor::Tensor;

pub const CHECKPOINTS_DIR: &str = "checkpoints";
const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const TEMP_PREFIX: &str = ".tmp-";

/// Everything besides tensors that a resumed run needs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub step: u64,
    /// Micro-batches taken from the training stream.
    pub data_position: u64,
    pub config: TrainConfig,
    /// Number of training examples and a hash of their tokens: a resume on
    /// other data is refused rather than silently continuing.
    pub train_examples: usize,
    pub data_fingerprint: String,
}

/// A checkpoint read back from disk.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub state: TrainerState,
    pub adapter: AdapterWeights,
    /// AdamW (first, second) moments by parameter name.
    pub moments: BTreeMap<String, (HostTensor, HostTensor)>,
}

/// A checkpoint written to its temporary directory but not yet renamed into
/// place: until [`StagedCheckpoint::commit`], loaders do not see it.
pub struct StagedCheckpoint {
    temp: PathBuf,
    target: PathBuf,
}

impl StagedCheckpoint {
    /// Renames the checkpoint into place and returns its directory.
    pub fn commit(self) -> Result<PathBuf> {
        // Saving the same step twice (e.g. the final save right after a
        // periodic one): the older copy goes first; a rename cannot replace a directory.
        if self.target.exists() {
            std::fs::remove_dir_all(&self.target).map_err(io_err(&self.target))?;
        }
        std::fs::rename(&self.temp, &self.target).map_err(io_err(&self.target))?;
        Ok(self.target)
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// Writes a checkpoint for `step` into a temporary directory under
/// `adapter_dir/checkpoints/`. Stale temporaries of crashed saves are removed first.
pub fn stage(
    adapter_dir: &Path,
    adapter: &AdapterWeights,
    moments: &[(String, Tensor, Tensor)],
    state: &TrainerState,
) -> Result<StagedCheckpoint> {
    let root = adapter_dir.join(CHECKPOINTS_DIR);
    std::fs::create_dir_all(&root).map_err(io_err(&root))?;
    remove_stale_temporaries(&root);
    let name = step_dir_name(state.step);
    let temp = root.join(format!("{TEMP_PREFIX}{name}-{}", unique_suffix()));
    // create_dir, not create_dir_all: the name is fresh, and an existing one must not be reused.
    std::fs::create_dir(&temp).map_err(io_err(&temp))?;
    adapter.save(&temp)?;
    let mut tensors = BTreeMap::new();
    for (param, m, v) in moments {
        tensors.insert(format!("{param}.exp_avg"), HostTensor::from_gpu(m)?);
        tensors.insert(format!("{param}.exp_avg_sq"), HostTensor::from_gpu(v)?);
    }
    write_safetensors(&temp.join(OPTIMIZER_FILE), &tensors, None)?;
    let json = serde_json::to_string_pretty(state).expect("plain data serializes");
    write_atomically(&temp.join(STATE_FILE), json.as_bytes())?;
    Ok(StagedCheckpoint {
        temp,
        target: root.join(name),
    })
}

fn remove_stale_temporaries(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The files and folders of a training run that exist in `adapter_dir`
/// (checkpoints, metrics, the adapter, the loss plot): a new run must not
/// start there unless told to replace them.
pub fn existing_run_files(adapter_dir: &Path) -> Vec<String> {
    let plot = |ext: &str| format!("{}.{ext}", super::LOSS_PLOT_STEM);
    let checkpoints = adapter_dir.join(CHECKPOINTS_DIR);
    let mut found = Vec::new();
    if std::fs::read_dir(&checkpoints).is_ok_and(|mut d| d.next().is_some()) {
        found.push(format!("{CHECKPOINTS_DIR}/"));
    }
    let files = [
        super::METRICS_FILE.to_string(),
        crate::io::CONFIG_FILE.to_string(),
        crate::io::WEIGHTS_FILE.to_string(),
        plot("png"),
        plot("svg"),
    ];
    for name in files {
        if adapter_dir.join(&name).exists() {
            found.push(name);
        }
    }
    found
}

/// Committed checkpoints under `adapter_dir`, oldest first, with their steps.
pub fn list(adapter_dir: &Path) -> Vec<(u64, PathBuf)> {
    let root = adapter_dir.join(CHECKPOINTS_DIR);
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            e.path()
                .join(STATE_FILE)
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// The newest committed checkpoint under `adapter_dir`, if any.
pub fn latest(adapter_dir: &Path) -> Option<PathBuf> {
    list(adapter_dir).pop().map(|(_, p)| p)
}

/// Deletes all but the newest `keep` checkpoints.
pub fn prune(adapter_dir: &Path, keep: usize) {
    let all = list(adapter_dir);
    let excess = all.len().saturating_sub(keep);
    for (_, dir) in &all[..excess] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Reads a checkpoint directory (`.../checkpoints/step-NNNNNN`).
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(io_err(&state_path))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| Error::Format {
        path: state_path.display().to_string(),
        message: e.to_string(),
    })?;
    let adapter = AdapterWeights::load(dir)?;
    let opt_path = dir.join(OPTIMIZER_FILE);
    let mut tensors = read_safetensors(&opt_path)?;
    let mut moments = BTreeMap::new();
    let names: Vec<String> = tensors
        .keys()
        .filter_map(|k| k.strip_suffix(".exp_avg").map(str::to_string))
        .collect();
    for name in names {
        let m = tensors.remove(&format!("{name}.exp_avg"));
        let v = tensors.remove(&format!("{name}.exp_avg_sq"));
        let (Some(m), Some(v)) = (m, v) else {
            return Err(Error::Format {
                path: opt_path.display().to_string(),
                message: format!("tensor {name}.exp_avg_sq is missing"),
            });
        };
        moments.insert(name, (m, v));
    }
    if let Some(extra) = tensors.keys().next() {
        return Err(Error::Format {
            path: opt_path.display().to_string(),
            message: format!("unexpected tensor {extra}"),
        });
    }
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        state,
        adapter,
        moments,
    })
}
