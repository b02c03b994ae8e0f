//! `merge`: folds an adapter into its base model and writes a complete
//! Hugging Face directory that loads as an ordinary model.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use super::new_dir::{io_err, write_new_dir};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::io::hf::MappedWeights;
use crate::io::{write_safetensors_streamed, AdapterWeights, HostTensor, TensorEntry};
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
    let inputs = [("base model", model_dir), ("adapter", adapter_dir)];
    write_new_dir(out_dir, &inputs, |temp| {
        let mut model = Llama::load(gpu, model_dir)?;
        model.attach_adapter(&AdapterWeights::load(adapter_dir)?)?;
        // The merged projections stay on the GPU until written; every other
        // tensor is copied from the mapped base files: one tensor in host memory at a time.
        let merged = model.merged_weights()?;
        let base = MappedWeights::open(model_dir)?;
        write_merged(model_dir, temp, &base, &merged)
    })
}

fn write_merged(
    model_dir: &Path,
    dir: &Path,
    base: &MappedWeights,
    merged: &BTreeMap<String, Tensor>,
) -> Result<()> {
    let entries: Vec<TensorEntry> = base
        .names()
        .filter_map(|name| {
            let (dtype, shape) = match merged.get(name) {
                Some(t) => (t.dtype(), t.shape().to_vec()),
                None => {
                    let (dtype, shape) = base.info(name)?;
                    (dtype, shape.to_vec())
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
            None => base
                .get(&e.name)
                .map_or(Cow::Borrowed(&[][..]), |t| t.bytes),
        })
    })?;
    if model_dir.is_file() {
        // A GGUF base: its metadata and vocabulary as Hugging Face files.
        if let MappedWeights::Gguf(gguf) = base {
            let path = dir.join("config.json");
            let text = serde_json::to_string_pretty(&gguf.config).expect("JSON values serialize");
            std::fs::write(&path, text + "\n").map_err(io_err(&path))?;
        }
        return crate::tokenizer::Tokenizer::load(model_dir)?.write_hf_files(dir);
    }
    for name in COPIED {
        let src = model_dir.join(name);
        if src.exists() {
            std::fs::copy(&src, dir.join(name)).map_err(io_err(&src))?;
        }
    }
    Ok(())
}
