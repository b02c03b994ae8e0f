//! Hugging Face model directories: `config.json` and the weights
//! (`model.safetensors`, or `model.safetensors.index.json` + shards).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::safetensors::{read_safetensors, HostTensor, MappedSafetensors, TensorRef};
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

/// Sizes above this are no real model's (and would overflow products of two).
const MAX_SIZE: usize = 1 << 31;

/// `config.json` as transformers writes it (the fields used here).
#[derive(Deserialize)]
struct RawConfig {
    model_type: String,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    /// transformers 5 (`rope_parameters`) or older (`rope_scaling`).
    rope_parameters: Option<RawRope>,
    rope_scaling: Option<RawRope>,
    tie_word_embeddings: Option<bool>,
    max_position_embeddings: Option<usize>,
    eos_token_id: Option<OneOrMany>,
}

#[derive(Deserialize)]
struct RawRope {
    rope_type: Option<String>,
    /// The older spelling of `rope_type`.
    #[serde(rename = "type")]
    kind: Option<String>,
    rope_theta: Option<f64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl ModelConfig {
    pub fn load(dir: &Path) -> Result<ModelConfig> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        let format_err = |message| Error::Format {
            path: path.display().to_string(),
            message,
        };
        // The architecture first: another model's config lacks our fields,
        // and "not supported" is the error that helps.
        #[derive(Deserialize)]
        struct Architecture {
            model_type: Option<String>,
        }
        let arch: Architecture = super::parse_json(&text).map_err(format_err)?;
        match arch.model_type {
            None => return Err(format_err("field model_type is missing".into())),
            Some(t) if !SUPPORTED_MODEL_TYPES.contains(&t.as_str()) => {
                return Err(format_err(format!(
                    "model_type {t:?} is not supported (supported: {})",
                    SUPPORTED_MODEL_TYPES.join(", ")
                )))
            }
            Some(_) => {}
        }
        let raw: RawConfig = super::parse_json(&text).map_err(format_err)?;
        ModelConfig::from_raw(raw).map_err(format_err)
    }

    /// Checks every value a forward pass depends on; errors name the field and value.
    fn from_raw(j: RawConfig) -> std::result::Result<ModelConfig, String> {
        let heads = j.num_attention_heads;
        let kv_heads = j.num_key_value_heads.unwrap_or(heads);
        let sizes = [
            ("hidden_size", j.hidden_size),
            ("intermediate_size", j.intermediate_size),
            ("num_hidden_layers", j.num_hidden_layers),
            ("num_attention_heads", heads),
            ("num_key_value_heads", kv_heads),
            ("vocab_size", j.vocab_size),
        ];
        for (name, v) in sizes.into_iter().chain(j.head_dim.map(|d| ("head_dim", d))) {
            if v == 0 || v > MAX_SIZE {
                return Err(format!("{name} {v} is out of range (1 to {MAX_SIZE})"));
            }
        }
        if !heads.is_multiple_of(kv_heads) {
            return Err(format!(
                "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            ));
        }
        let head_dim = match j.head_dim {
            Some(d) => d,
            None if j.hidden_size.is_multiple_of(heads) => j.hidden_size / heads,
            None => {
                return Err(format!(
                    "hidden_size {} is not divisible by num_attention_heads {heads} (and head_dim is not given)",
                    j.hidden_size
                ))
            }
        };
        if !head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim {head_dim} is odd; rotary embeddings rotate pairs of dimensions"
            ));
        }
        let rope = j.rope_parameters.as_ref().or(j.rope_scaling.as_ref());
        if let Some(kind) = rope.and_then(|r| r.rope_type.as_ref().or(r.kind.as_ref())) {
            if kind != "default" {
                return Err(format!(
                    "rope_type {kind:?} is not supported yet (only \"default\")"
                ));
            }
        }
        let rope_theta = rope
            .and_then(|r| r.rope_theta)
            .or(j.rope_theta)
            .unwrap_or(10_000.0);
        // f32 is what the kernels use: a value that overflows it is out of range too.
        if !((rope_theta as f32).is_finite() && rope_theta > 0.0) {
            return Err(format!("rope_theta {rope_theta} must be a positive number"));
        }
        let rms_norm_eps = j.rms_norm_eps.unwrap_or(1e-6);
        if !((rms_norm_eps as f32).is_finite() && rms_norm_eps as f32 > 0.0) {
            return Err(format!(
                "rms_norm_eps {rms_norm_eps} must be a positive number"
            ));
        }
        let eos_token_ids = match j.eos_token_id {
            Some(OneOrMany::One(id)) => vec![id],
            Some(OneOrMany::Many(ids)) => ids,
            None => Vec::new(),
        };
        Ok(ModelConfig {
            model_type: j.model_type,
            hidden_size: j.hidden_size,
            intermediate_size: j.intermediate_size,
            num_hidden_layers: j.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            vocab_size: j.vocab_size,
            rms_norm_eps: rms_norm_eps as f32,
            rope_theta: rope_theta as f32,
            tie_word_embeddings: j.tie_word_embeddings.unwrap_or(false),
            max_position_embeddings: j.max_position_embeddings.unwrap_or(4096),
            eos_token_ids,
        })
    }
}

/// The weight files of a model directory: `model.safetensors`, or the
/// shards `model.safetensors.index.json` names.
struct WeightFiles {
    files: Vec<PathBuf>,
    /// The index file and the tensor names its `weight_map` lists.
    index: Option<(PathBuf, Vec<String>)>,
}

impl WeightFiles {
    fn find(dir: &Path) -> Result<WeightFiles> {
        let single = dir.join("model.safetensors");
        if single.exists() {
            return Ok(WeightFiles {
                files: vec![single],
                index: None,
            });
        }
        let index_path = dir.join("model.safetensors.index.json");
        let text = std::fs::read_to_string(&index_path).map_err(|_| Error::Format {
            path: dir.display().to_string(),
            message: "holds neither model.safetensors nor model.safetensors.index.json".into(),
        })?;
        #[derive(Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let index: Index = super::parse_json(&text).map_err(|message| Error::Format {
            path: index_path.display().to_string(),
            message,
        })?;
        let shards: BTreeSet<&String> = index.weight_map.values().collect();
        Ok(WeightFiles {
            files: shards.into_iter().map(|s| dir.join(s)).collect(),
            index: Some((index_path, index.weight_map.into_keys().collect())),
        })
    }

    /// What `read` gives for every file, merged; every tensor the index
    /// lists must be among them.
    fn read_all<T>(
        &self,
        mut read: impl FnMut(&Path) -> Result<BTreeMap<String, T>>,
    ) -> Result<BTreeMap<String, T>> {
        let mut all = BTreeMap::new();
        for file in &self.files {
            all.extend(read(file)?);
        }
        let Some((index_path, names)) = &self.index else {
            return Ok(all);
        };
        match names.iter().find(|n| !all.contains_key(*n)) {
            Some(name) => Err(Error::Format {
                path: index_path.display().to_string(),
                message: format!(
                    "tensor {name} is listed in weight_map but missing from its shard"
                ),
            }),
            None => Ok(all),
        }
    }
}

/// Every weight tensor of a model directory, from one file or from the shards
/// a `model.safetensors.index.json` names.
pub fn load_weights(dir: &Path) -> Result<BTreeMap<String, HostTensor>> {
    WeightFiles::find(dir)?.read_all(read_safetensors)
}

/// A model directory's weight files mapped into memory, looked up by tensor
/// name: a loader uploads each tensor from the page cache and never holds a
/// copy of the whole file.
pub struct MappedWeights {
    files: Vec<MappedSafetensors>,
    /// Which file holds each tensor.
    by_name: BTreeMap<String, usize>,
}

impl MappedWeights {
    pub fn open(dir: &Path) -> Result<MappedWeights> {
        let mut files = Vec::new();
        let by_name = WeightFiles::find(dir)?.read_all(|path| {
            let file = MappedSafetensors::open(path)?;
            let names = file.names().map(|n| (n.to_string(), files.len())).collect();
            files.push(file);
            Ok(names)
        })?;
        Ok(MappedWeights { files, by_name })
    }

    pub fn get(&self, name: &str) -> Option<TensorRef<'_>> {
        self.files[*self.by_name.get(name)?].get(name)
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Every tensor's shape by name, from the headers (no tensor data is read).
    pub fn shapes(&self) -> BTreeMap<&str, &[usize]> {
        self.names()
            .filter_map(|name| Some((name, self.get(name)?.shape)))
            .collect()
    }
}
