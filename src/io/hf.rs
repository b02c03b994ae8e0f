//! Hugging Face model directories: `config.json` and the weights
//! (`model.safetensors`, or `model.safetensors.index.json` + shards).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use super::safetensors::{read_safetensors, HostTensor};
use crate::error::{Error, Result};

/// What the Llama-family decoder needs from `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// llama, qwen2 or mistral.
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    /// From `rope_parameters.rope_theta` (newer configs) or top-level `rope_theta`.
    pub rope_theta: f32,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
    pub eos_token_ids: Vec<u32>,
}

pub const SUPPORTED_MODEL_TYPES: [&str; 3] = ["llama", "qwen2", "mistral"];

impl ModelConfig {
    pub fn load(dir: &Path) -> Result<ModelConfig> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|e| Error::Format {
            path: path.display().to_string(),
            message: format!("invalid JSON: {e}"),
        })?;
        ModelConfig::from_json(&json).map_err(|message| Error::Format {
            path: path.display().to_string(),
            message,
        })
    }

    fn from_json(j: &Value) -> std::result::Result<ModelConfig, String> {
        let usize_field = |name: &str| -> std::result::Result<usize, String> {
            j.get(name)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| format!("field {name} is missing or not a non-negative integer"))
        };
        let model_type = j
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or("field model_type is missing")?
            .to_string();
        if !SUPPORTED_MODEL_TYPES.contains(&model_type.as_str()) {
            return Err(format!(
                "model_type {model_type:?} is not supported (supported: {})",
                SUPPORTED_MODEL_TYPES.join(", ")
            ));
        }
        let rope = j
            .get("rope_parameters")
            .or_else(|| j.get("rope_scaling"))
            .filter(|v| !v.is_null());
        if let Some(kind) = rope
            .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
            .and_then(Value::as_str)
        {
            if kind != "default" {
                return Err(format!(
                    "rope_type {kind:?} is not supported yet (only \"default\")"
                ));
            }
        }
        let rope_theta = rope
            .and_then(|r| r.get("rope_theta"))
            .or_else(|| j.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(10_000.0) as f32;
        let hidden_size = usize_field("hidden_size")?;
        let heads = usize_field("num_attention_heads")?;
        let kv_heads = j
            .get("num_key_value_heads")
            .and_then(Value::as_u64)
            .map_or(heads, |v| v as usize);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(format!(
                "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            ));
        }
        let head_dim = match j.get("head_dim").and_then(Value::as_u64) {
            Some(d) => d as usize,
            None if hidden_size.is_multiple_of(heads) => hidden_size / heads,
            None => {
                return Err(format!(
                    "hidden_size {hidden_size} is not divisible by num_attention_heads {heads}"
                ))
            }
        };
        let eos_token_ids = match j.get("eos_token_id") {
            Some(Value::Array(v)) => v
                .iter()
                .filter_map(Value::as_u64)
                .map(|x| x as u32)
                .collect(),
            Some(v) => v.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(ModelConfig {
            model_type,
            hidden_size,
            intermediate_size: usize_field("intermediate_size")?,
            num_hidden_layers: usize_field("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            vocab_size: usize_field("vocab_size")?,
            rms_norm_eps: j
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-6) as f32,
            rope_theta,
            tie_word_embeddings: j
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            max_position_embeddings: j
                .get("max_position_embeddings")
                .and_then(Value::as_u64)
                .unwrap_or(4096) as usize,
            eos_token_ids,
        })
    }
}

/// Every weight tensor of a model directory, from one file or from the shards
/// a `model.safetensors.index.json` names.
pub fn load_weights(dir: &Path) -> Result<BTreeMap<String, HostTensor>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return read_safetensors(&single);
    }
    let index_path = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index_path).map_err(|_| Error::Format {
        path: dir.display().to_string(),
        message: "holds neither model.safetensors nor model.safetensors.index.json".into(),
    })?;
    let index: Value = serde_json::from_str(&text).map_err(|e| Error::Format {
        path: index_path.display().to_string(),
        message: format!("invalid JSON: {e}"),
    })?;
    let map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::Format {
            path: index_path.display().to_string(),
            message: "field weight_map is missing".into(),
        })?;
    let shards: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
    let mut all = BTreeMap::new();
    for shard in shards {
        all.extend(read_safetensors(&dir.join(shard))?);
    }
    for name in map.keys() {
        if !all.contains_key(name) {
            return Err(Error::Format {
                path: index_path.display().to_string(),
                message: format!(
                    "tensor {name} is listed in weight_map but missing from its shard"
                ),
            });
        }
    }
    Ok(all)
}
