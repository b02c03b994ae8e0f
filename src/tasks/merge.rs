//! `merge`: folds an adapter into its base model and writes a complete
//! Hugging Face directory that loads as an ordinary model.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::io::hf::MappedWeights;
use crate::io::{
    unique_suffix, write_safetensors_streamed, AdapterWeights, HostTensor, TensorEntry,
};
use crate::nn::Llama;
use crate::tensor::Tensor;

/// Files copied unchanged from the base model directory when present.
const COPIED: [&str; 7] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
];

/// Writes `out_dir` with the merged weights (in the base dtype) in one
/// `model.safetensors`, plus the base directory's config and tokenizer files.
/// `out_dir` must be new (or empty) and must not be or contain the model or
/// adapter directory; it is written under a temporary name and renamed into
/// place, so a failed merge leaves nothing half-written.
pub fn merge_model(gpu: &Gpu, model_dir: &Path, adapter_dir: &Path, out_dir: &Path) -> Result<()> {
    let out = resolve(out_dir)?;
    for (what, dir) in [("base model", model_dir), ("adapter", adapter_dir)] {
        if resolve(dir)?.starts_with(&out) {
            return Err(Error::InvalidArgument(format!(
                "--out {} is or contains the {what} directory {}; choose a new directory",
                out_dir.display(),
                dir.display()
            )));
        }
    }
    if out_dir.exists() {
        let empty = std::fs::read_dir(out_dir).is_ok_and(|mut d| d.next().is_none());
        if !empty {
            return Err(Error::InvalidArgument(format!(
                "--out {} already exists and is not an empty directory; choose a new one",
                out_dir.display()
            )));
        }
    }
    let mut model = Llama::load(gpu, model_dir)?;
    model.attach_adapter(&AdapterWeights::load(adapter_dir)?)?;
    // The merged projections stay on the GPU until written; every other
    // tensor is copied from the mapped base files: one tensor in host memory at a time.
    let merged = model.merged_weights()?;
    let base = MappedWeights::open(model_dir)?;

    let name = out.file_name().unwrap_or_default().to_string_lossy();
    let temp = out.with_file_name(format!(".{name}.tmp-{}", unique_suffix()));
    let written = write_merged(model_dir, &temp, &base, &merged).and_then(|()| {
        // An empty `out_dir` gives way to the finished one (remove_dir only removes empty ones).
        if out.is_dir() {
            std::fs::remove_dir(&out).map_err(io_err(&out))?;
        }
        std::fs::rename(&temp, &out).map_err(io_err(&out))
    });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    written
}

fn write_merged(
    model_dir: &Path,
    dir: &Path,
    base: &MappedWeights,
    merged: &BTreeMap<String, Tensor>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let entries: Vec<TensorEntry> = base
        .names()
        .filter_map(|name| {
            let (dtype, shape) = match merged.get(name) {
                Some(t) => (t.dtype(), t.shape().to_vec()),
                None => {
                    let t = base.get(name)?;
                    (t.dtype, t.shape.to_vec())
                }
            };
            Some(TensorEntry {
                name: name.to_string(),
                dtype,
                shape,
            })
        })
        .collect();
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let path = dir.join("model.safetensors");
    write_safetensors_streamed(&path, &entries, &metadata, |e| {
        Ok(match merged.get(&e.name) {
            Some(t) => Cow::Owned(HostTensor::from_gpu(t)?.bytes),
            None => Cow::Borrowed(base.get(&e.name).map_or(&[][..], |t| t.bytes)),
        })
    })?;
    for name in COPIED {
        let src = model_dir.join(name);
        if src.exists() {
            std::fs::copy(&src, dir.join(name)).map_err(io_err(&src))?;
        }
    }
    Ok(())
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The absolute path `path` names, with symbolic links and `..` resolved, for
/// paths that do not exist yet too: the nearest existing ancestor is
/// canonicalized and the rest appended (textual comparison misses `./m` = `m`).
fn resolve(path: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(path).map_err(io_err(path))?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        let Some(parent) = existing.parent() else {
            break;
        };
        rest.extend(existing.components().next_back());
        existing = parent;
    }
    let mut resolved = existing.canonicalize().map_err(io_err(existing))?;
    for c in rest.into_iter().rev() {
        match c {
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(n) => resolved.push(n),
            _ => {}
        }
    }
    Ok(resolved)
}
