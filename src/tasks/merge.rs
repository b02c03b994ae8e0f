//! `merge`: folds an adapter into its base model and writes a complete
//! Hugging Face directory that loads as an ordinary model.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use super::new_dir::{io_err, write_new_dir};
use crate::error::{arg_err, Result};
use crate::gpu::Gpu;
use crate::io::hf::MappedWeights;
use crate::io::{write_safetensors_streamed, AdapterWeights, HostTensor, TensorEntry};
use crate::nn::Llama;
use crate::tensor::Tensor;

/// Files copied unchanged from the base model directory when present (a
/// multimodal Gemma 3's processor files too).
const COPIED: [&str; 12] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
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
    // A tensor is written under the name it is stored under (a multimodal
    // Gemma 3's hub layout stays as it was); `merged` uses names in memory.
    let in_memory: BTreeMap<&str, &str> = base.names().map(|n| (base.stored_name(n), n)).collect();
    let entries: Vec<TensorEntry> = base
        .names()
        .filter_map(|name| {
            let (dtype, shape) = match merged.get(name) {
                Some(t) => (t.dtype(), t.shape().to_vec()),
                None => {
                    let (dtype, shape) = base.info(name)?;
                    (dtype.dense(), shape.to_vec())
                }
            };
            Some(TensorEntry {
                name: base.stored_name(name).to_string(),
                dtype,
                shape,
            })
        })
        .collect();
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let path = dir.join("model.safetensors");
    write_safetensors_streamed(&path, &entries, &metadata, |e| {
        let name = in_memory[e.name.as_str()];
        Ok(match merged.get(name) {
            Some(t) => Cow::Owned(HostTensor::from_gpu(t)?.bytes),
            None => base
                .get(name)
                .map_or(Cow::Borrowed(&[][..]), |t| t.into_dense().bytes),
        })
    })?;
    if let MappedWeights::Gguf(gguf) = base {
        // A GGUF base: its metadata and vocabulary as Hugging Face files.
        let config = serde_json::to_string_pretty(&gguf.config).expect("JSON values serialize");
        let tokenizer = crate::text::Tokenizer::load(model_dir)?.hf_files()?;
        for (name, text) in std::iter::once(("config.json", config + "\n")).chain(tokenizer) {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(io_err(&path))?;
        }
        return Ok(());
    }
    for name in COPIED {
        let src = model_dir.join(name);
        if src.exists() {
            std::fs::copy(&src, dir.join(name)).map_err(io_err(&src))?;
        }
    }
    Ok(())
}

/// The tensor format of a merged GGUF file (`--outtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutType {
    F16,
    Bf16,
    Q8_0,
    /// Each tensor in its base format; merged ones the base cannot be
    /// re-encoded to (the K-quants) go to Q8_0.
    Same,
}

impl OutType {
    pub const NAMES: [&'static str; 4] = ["f16", "bf16", "q8_0", "same"];

    pub fn parse(name: &str) -> Option<OutType> {
        match name {
            "f16" => Some(OutType::F16),
            "bf16" => Some(OutType::Bf16),
            "q8_0" => Some(OutType::Q8_0),
            "same" => Some(OutType::Same),
            _ => None,
        }
    }
}

/// Folds the adapter into a GGUF base and writes a complete GGUF file
/// `out` (which must not exist): the base's metadata and tokenizer, every
/// tensor in llama.cpp's layout, weights re-encoded as `out_type` asks
/// (1-D tensors, the norms, stay as stored). Returns a summary line.
pub fn merge_to_gguf(
    gpu: &Gpu,
    model: &Path,
    adapter_dir: &Path,
    out: &Path,
    out_type: OutType,
) -> Result<String> {
    use crate::io::gguf::{blocks, write_gguf, GgmlType, OutTensor, Value};
    if !model.is_file() {
        arg_err!(
            "--out {} is a GGUF file, which merge writes from a GGUF --model only; for a Hugging Face model write a directory",
            out.display()
        );
    }
    if out.exists() {
        arg_err!(
            "--out {} already exists; merge writes a new file and never replaces one",
            out.display()
        );
    }
    let mut llama = Llama::load(gpu, model)?;
    llama.attach_adapter(&AdapterWeights::load(adapter_dir)?)?;
    let merged = llama.merged_weights()?;
    drop(llama);
    let base = crate::io::hf::open_gguf(model)?;
    let mut fell_back = Vec::new();
    // Each tensor to write, with its Hugging Face name and whether it was merged.
    let (tensors, sources): (Vec<OutTensor>, Vec<(Option<&str>, bool)>) = base
        .file_tensors()
        .into_iter()
        .map(|(info, hf)| {
            let stored = info.kind.expect("open_gguf refuses unreadable types");
            let is_merged = hf.is_some_and(|n| merged.contains_key(n));
            let wanted = match out_type {
                _ if info.shape.len() < 2 => stored,
                OutType::F16 => GgmlType::F16,
                OutType::Bf16 => GgmlType::BF16,
                OutType::Q8_0 => GgmlType::Q8_0,
                OutType::Same if is_merged && !blocks::WRITABLE.contains(&stored) => {
                    fell_back.push(info.name.clone());
                    GgmlType::Q8_0
                }
                OutType::Same => stored,
            };
            // A row that is not whole blocks of the wanted format keeps its own.
            let kind = if info
                .shape
                .last()
                .is_some_and(|&c| c % wanted.block().0 == 0)
            {
                wanted
            } else {
                stored
            };
            let tensor = OutTensor {
                name: info.name.clone(),
                kind,
                shape: info.shape.clone(),
            };
            (tensor, (hf, is_merged))
        })
        .unzip();
    let mut metadata: BTreeMap<String, Value> = base.file.metadata.clone();
    let file_type = match out_type {
        OutType::F16 => Some(1),
        OutType::Bf16 => Some(32),
        OutType::Q8_0 => Some(7),
        OutType::Same => None,
    };
    if let Some(t) = file_type {
        metadata.insert("general.file_type".into(), Value::U32(t));
    }
    write_gguf(out, &metadata, &tensors, |i, t| {
        let (hf, is_merged) = sources[i];
        let (info, bytes) = base.file.tensor_bytes(&t.name)?;
        let stored = info.kind.expect("open_gguf refuses unreadable types");
        if !is_merged && t.kind == stored {
            return Ok(bytes.to_vec());
        }
        let values = match hf.filter(|_| is_merged) {
            Some(name) => base.to_stored(name, HostTensor::from_gpu(&merged[name])?.to_f32()),
            None => base.file.tensor_f32(&t.name)?.1,
        };
        Ok(blocks::quantize(t.kind, &values).expect("only writable formats are planned"))
    })?;
    let mut summary = format!(
        "{} tensors, {} merged",
        tensors.len(),
        sources.iter().filter(|(_, merged)| *merged).count()
    );
    if !fell_back.is_empty() {
        summary += &format!(
            "; {} merged tensors written as Q8_0 (their base format cannot be re-encoded here: {}...)",
            fell_back.len(),
            fell_back[0]
        );
    }
    Ok(summary)
}
