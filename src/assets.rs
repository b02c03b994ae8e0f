//! The embedded default model and fine-tuning data (`assets/`, made by
//! `tools/make_default_model.py`, CC0): compiled into the binary so that
//! `dora-wgpu train` with no arguments works anywhere, offline. They are
//! written out to a folder under the system's temp directory on first use.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::io::write_atomically;

const MODEL_FILES: [(&str, &[u8]); 5] = [
    (
        "config.json",
        include_bytes!("../assets/default-model/config.json"),
    ),
    (
        "generation_config.json",
        include_bytes!("../assets/default-model/generation_config.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../assets/default-model/model.safetensors"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../assets/default-model/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../assets/default-model/tokenizer_config.json"),
    ),
];

const DATA_FILES: [(&str, &[u8]); 3] = [
    (
        "train.jsonl",
        include_bytes!("../assets/default-data/train.jsonl"),
    ),
    (
        "valid.jsonl",
        include_bytes!("../assets/default-data/valid.jsonl"),
    ),
    (
        "test.jsonl",
        include_bytes!("../assets/default-data/test.jsonl"),
    ),
];

/// Writes `files` into `temp/dora-wgpu-<version>/<name>` unless already there
/// with the same size, and returns that folder.
fn unpack(name: &str, files: &[(&str, &[u8])]) -> Result<PathBuf> {
    let dir = std::env::temp_dir()
        .join(format!("dora-wgpu-{}", env!("CARGO_PKG_VERSION")))
        .join(name);
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        path: dir.display().to_string(),
        source,
    })?;
    for (file, bytes) in files {
        let path = dir.join(file);
        let same = std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64)
            && std::fs::read(&path).is_ok_and(|b| b == *bytes);
        if !same {
            write_atomically(&path, bytes)?;
        }
    }
    Ok(dir)
}

/// The default model's Hugging Face directory (870k-parameter Llama, ChatML tokenizer).
pub fn default_model_dir() -> Result<PathBuf> {
    unpack("default-model", &MODEL_FILES)
}

/// The default data directory (`train.jsonl`, `valid.jsonl`, `test.jsonl`:
/// chat with the lighthouse keeper of an invented island).
pub fn default_data_dir() -> Result<PathBuf> {
    unpack("default-data", &DATA_FILES)
}
