//! `merge`: folds an adapter into its base model and writes a complete
//! Hugging Face directory that loads as an ordinary model.

use std::path::Path;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::io::hf::load_weights;
use crate::io::{write_safetensors, AdapterWeights, HostTensor};
use crate::nn::Llama;

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
pub fn merge_model(gpu: &Gpu, model_dir: &Path, adapter_dir: &Path, out_dir: &Path) -> Result<()> {
    if out_dir == model_dir {
        return Err(Error::InvalidArgument(format!(
            "--out {} is the base model directory; choose another",
            out_dir.display()
        )));
    }
    let mut model = Llama::load(gpu, model_dir)?;
    model.attach_adapter(&AdapterWeights::load(adapter_dir)?)?;
    let mut weights = load_weights(model_dir)?;
    for (name, merged) in model.merged_weights()? {
        weights.insert(name, HostTensor::from_gpu(&merged)?);
    }
    std::fs::create_dir_all(out_dir).map_err(|source| Error::Io {
        path: out_dir.display().to_string(),
        source,
    })?;
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&out_dir.join("model.safetensors"), &weights, Some(metadata))?;
    for name in COPIED {
        let src = model_dir.join(name);
        if src.exists() {
            std::fs::copy(&src, out_dir.join(name)).map_err(|source| Error::Io {
                path: src.display().to_string(),
                source,
            })?;
        }
    }
    Ok(())
}
