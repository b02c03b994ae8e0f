//! MLX-LM adapter directories (`adapters.safetensors` + `adapter_config.json`)
//! and their exact mapping to and from PEFT's.
//!
//! MLX-LM computes the same LoRA and DoRA layers as PEFT, stored differently:
//! `<module>.lora_a` is `[in, r]` (PEFT's `lora_A` transposed), `<module>.lora_b`
//! is `[r, out]` (`lora_B` transposed), DoRA's magnitude is `<module>.m`, and the
//! update's scale is absolute (`lora_parameters.scale`, PEFT's alpha / r).
//! Which modules are adapted: `lora_parameters.keys` (paths inside a decoder
//! layer, `self_attn.q_proj`) in the last `num_layers` layers. Anything that
//! has no counterpart on the other side (per-module ranks, modules outside
//! the decoder layers, an arbitrary set of layers, embeddings) is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::peft::{write_adapter_dir, AdapterConfig, AdapterWeights, ModuleAdapter};
use super::safetensors::{read_safetensors, HostTensor};
use crate::error::{Error, Result};

pub const MLX_CONFIG_FILE: &str = "adapter_config.json";
pub const MLX_WEIGHTS_FILE: &str = "adapters.safetensors";
const LAYER_PREFIX: &str = "model.layers.";

/// The part of MLX-LM's `adapter_config.json` its `load_adapters` reads;
/// the training arguments MLX-LM also writes there are kept as read.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MlxConfig {
    #[serde(default = "default_fine_tune_type")]
    pub fine_tune_type: String,
    pub num_layers: usize,
    pub lora_parameters: LoraParameters,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LoraParameters {
    pub rank: usize,
    /// The update's absolute scale (PEFT: alpha / r, or alpha / √r with rsLoRA).
    pub scale: f64,
    #[serde(default)]
    pub dropout: f32,
    /// Module paths inside a decoder layer; absent: MLX-LM's per-model default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

fn default_fine_tune_type() -> String {
    "lora".into()
}

/// An MLX-LM adapter: its config and each module's tensors in PEFT's layout
/// (`lora_a` [r, in], `lora_b` [out, r]), keyed by module path
/// (`model.layers.0.self_attn.q_proj`).
#[derive(Clone, Debug, PartialEq)]
pub struct MlxAdapter {
    pub config: MlxConfig,
    pub modules: BTreeMap<String, ModuleAdapter>,
}

/// `(N, rest)` of a `model.layers.N.rest` module path.
fn split_layer(module: &str) -> Option<(usize, &str)> {
    let (index, rest) = module.strip_prefix(LAYER_PREFIX)?.split_once('.')?;
    Some((index.parse().ok()?, rest))
}

fn transpose(t: &HostTensor) -> HostTensor {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let v = t.to_f32();
    let mut out = vec![0f32; v.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = v[i * cols + j];
        }
    }
    HostTensor::from_f32(&out, &[cols, rows])
}

impl MlxAdapter {
    /// Reads an MLX-LM adapter directory.
    pub fn load(dir: &Path) -> Result<MlxAdapter> {
        let config_path = dir.join(MLX_CONFIG_FILE);
        let shown = config_path.display().to_string();
        let text = std::fs::read_to_string(&config_path).map_err(|source| Error::Io {
            path: shown.clone(),
            source,
        })?;
        let config: MlxConfig = crate::io::parse_json(&text).map_err(|message| Error::Format {
            path: shown.clone(),
            message: format!("not an MLX-LM adapter config: {message}"),
        })?;
        let bad_config = |message: String| Error::Format {
            path: shown.clone(),
            message,
        };
        match config.fine_tune_type.as_str() {
            "lora" | "dora" => {}
            other => {
                return Err(bad_config(format!(
                "fine_tune_type {other:?} is not an adapter (lora or dora); a full fine-tune is a model, not an adapter"
            )))
            }
        }
        let p = &config.lora_parameters;
        if p.rank == 0 || !p.scale.is_finite() || !(0.0..1.0).contains(&p.dropout) {
            return Err(bad_config(format!(
                "lora_parameters rank {}, scale {}, dropout {}: rank must be ≥ 1, scale finite, dropout in [0, 1)",
                p.rank, p.scale, p.dropout
            )));
        }

        let weights_path = dir.join(MLX_WEIGHTS_FILE);
        let err = |message: String| Error::Format {
            path: weights_path.display().to_string(),
            message,
        };
        let mut parts: BTreeMap<String, [Option<HostTensor>; 3]> = BTreeMap::new();
        for (key, t) in read_safetensors(&weights_path)? {
            let (module, slot) = if let Some(m) = key.strip_suffix(".lora_a") {
                (m, 0)
            } else if let Some(m) = key.strip_suffix(".lora_b") {
                (m, 1)
            } else if let Some(m) = key.strip_suffix(".m") {
                (m, 2)
            } else {
                return Err(err(format!(
                    "tensor {key} is not a lora_a, lora_b or m tensor of an MLX-LM adapter"
                )));
            };
            if split_layer(module).is_none() {
                return Err(err(format!(
                    "tensor {key} adapts {module}, outside the decoder layers ({LAYER_PREFIX}N.…); PEFT adapters of this tool cover decoder layers only"
                )));
            }
            if t.dtype == crate::DType::I32 || t.shape.len() != if slot == 2 { 1 } else { 2 } {
                return Err(err(format!(
                    "tensor {key} is {:?} of shape {:?}; expected a float {} tensor",
                    t.dtype,
                    t.shape,
                    if slot == 2 { "1-D" } else { "2-D" }
                )));
            }
            let t = HostTensor::from_f32(&t.to_f32(), &t.shape);
            if let Some(i) = t.first_non_finite() {
                return Err(err(format!(
                    "tensor {key} holds a non-finite value (NaN or infinity) at element {i}"
                )));
            }
            parts.entry(module.to_string()).or_default()[slot] = Some(t);
        }
        if parts.is_empty() {
            return Err(err("holds no adapter tensors".into()));
        }
        let dora = config.fine_tune_type == "dora";
        let mut modules = BTreeMap::new();
        for (module, [a, b, m]) in parts {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(err(format!(
                    "{module} needs both lora_a and lora_b tensors"
                )));
            };
            if dora != m.is_some() {
                return Err(err(format!(
                    "{module}: fine_tune_type is {} but its m tensor is {}",
                    config.fine_tune_type,
                    if m.is_some() { "present" } else { "missing" }
                )));
            }
            let (r, out_f) = (a.shape[1], b.shape[1]);
            if b.shape[0] != r || r != p.rank {
                return Err(err(format!(
                    "{module}.lora_a is {:?} and {module}.lora_b is {:?}; with rank {} they must be [in, {}] and [{}, out]",
                    a.shape, b.shape, p.rank, p.rank, p.rank
                )));
            }
            if let Some(m) = &m {
                if m.shape != [out_f] {
                    return Err(err(format!(
                        "{module}.m is {:?}, expected [{out_f}] (lora_b is {:?})",
                        m.shape, b.shape
                    )));
                }
            }
            modules.insert(
                module,
                ModuleAdapter {
                    lora_a: transpose(&a),
                    lora_b: transpose(&b),
                    magnitude: m,
                },
            );
        }
        let adapter = MlxAdapter { config, modules };
        adapter.layer_range().map_err(bad_config)?;
        Ok(adapter)
    }

    /// The adapted layers, `num_layers` consecutive ones, each with the same
    /// modules (MLX-LM adapts every key in each of the last `num_layers` layers).
    fn layer_range(&self) -> std::result::Result<std::ops::Range<usize>, String> {
        let range = layer_range(&self.modules)?;
        let n = self.config.num_layers;
        if range.len() != n {
            return Err(format!(
                "num_layers is {n} but the tensors adapt layers {range:?}; they must be {n} consecutive layers ending at the model's last"
            ));
        }
        Ok(range)
    }

    /// Writes `adapters.safetensors` and `adapter_config.json` into `dir`
    /// (created if needed), each atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut tensors = BTreeMap::new();
        for (module, m) in &self.modules {
            tensors.insert(format!("{module}.lora_a"), transpose(&m.lora_a));
            tensors.insert(format!("{module}.lora_b"), transpose(&m.lora_b));
            if let Some(mag) = &m.magnitude {
                tensors.insert(format!("{module}.m"), mag.clone());
            }
        }
        let weights = (MLX_WEIGHTS_FILE, &tensors, None);
        write_adapter_dir(dir, weights, (MLX_CONFIG_FILE, &self.config))
    }

    /// The MLX-LM form of a PEFT adapter. `model_layers` is the model's
    /// `num_hidden_layers`: MLX-LM counts adapted layers from the last one,
    /// so an adapter of some layers needs it; one of every layer does not.
    pub fn from_peft(peft: &AdapterWeights, model_layers: Option<usize>) -> Result<MlxAdapter> {
        let c = &peft.config;
        let why = |why: String| Error::InvalidArgument(format!("cannot convert to MLX-LM: {why}"));
        let refuse = |reason: String| Err(why(reason));
        if !c.rank_pattern.is_empty() || !c.alpha_pattern.is_empty() {
            return refuse("the adapter has per-module ranks or alphas (rank_pattern/alpha_pattern); MLX-LM has one rank and scale".into());
        }
        let range = layer_range(&peft.modules).map_err(why)?;
        let all_layers = c
            .other
            .get("layers_to_transform")
            .is_none_or(serde_json::Value::is_null);
        if all_layers && range.start != 0 {
            return refuse(
                "layers_to_transform is not set, yet layer 0 has no adapter tensors".into(),
            );
        }
        let end = match (model_layers, all_layers) {
            (Some(n), _) => {
                if range.end > n {
                    return refuse(format!("the adapter has layer {}, but the model has {n} layers", range.end - 1));
                }
                n
            }
            (None, true) => range.end,
            (None, false) => return refuse("the adapter sets layers_to_transform; give --model so that the layers can be counted from the last one, as MLX-LM counts them".into()),
        };
        if range.end != end {
            return refuse(format!(
                "the adapted layers {range:?} are not the last {} of {end}; MLX-LM adapts the last num_layers layers",
                range.len()
            ));
        }
        let r = c.r;
        let scale = if c.use_rslora {
            c.lora_alpha as f64 / (r as f64).sqrt()
        } else {
            c.lora_alpha as f64 / r as f64
        };
        let keys = layer_keys(&peft.modules);
        let config = MlxConfig {
            fine_tune_type: if c.use_dora { "dora" } else { "lora" }.into(),
            num_layers: range.len(),
            lora_parameters: LoraParameters {
                rank: r,
                scale,
                dropout: c.lora_dropout,
                keys: Some(keys.iter().map(|k| k.to_string()).collect()),
                other: Default::default(),
            },
            other: Default::default(),
        };
        Ok(MlxAdapter {
            config,
            modules: peft.modules.clone(),
        })
    }

    /// The PEFT form: the same tensors, `lora_alpha` = scale · r, the adapted
    /// layers listed in `layers_to_transform` unless they start at layer 0.
    /// `model_layers` (the model's `num_hidden_layers`), when known, must be
    /// where the adapted layers end: MLX-LM counts them from the last one.
    pub fn to_peft(&self, model_layers: Option<usize>) -> Result<AdapterWeights> {
        let p = &self.config.lora_parameters;
        let range = self.layer_range().map_err(Error::InvalidArgument)?;
        if let Some(n) = model_layers.filter(|&n| n != range.end) {
            return Err(Error::InvalidArgument(format!(
                "cannot convert to PEFT: the adapter's layers {range:?} do not end at the model's last layer ({n} layers), where MLX-LM's num_layers counts from"
            )));
        }
        let keys = layer_keys(&self.modules);
        let targets: Vec<&str> = keys.into_iter().collect();
        let mut config = AdapterConfig::new(
            p.rank,
            (p.scale * p.rank as f64) as f32,
            self.config.fine_tune_type == "dora",
            &targets,
        );
        config.lora_dropout = p.dropout;
        if range.start != 0 {
            config.other.insert(
                "layers_to_transform".into(),
                serde_json::json!(range.collect::<Vec<_>>()),
            );
        }
        Ok(AdapterWeights {
            config,
            modules: self.modules.clone(),
        })
    }
}

/// The module paths inside a layer (`self_attn.q_proj`) that `modules` adapt.
fn layer_keys(modules: &BTreeMap<String, ModuleAdapter>) -> BTreeSet<&str> {
    modules
        .keys()
        .filter_map(|m| split_layer(m))
        .map(|(_, k)| k)
        .collect()
}

/// The layers `modules` adapt, checked to be consecutive decoder layers
/// holding the same module paths.
fn layer_range(
    modules: &BTreeMap<String, ModuleAdapter>,
) -> std::result::Result<std::ops::Range<usize>, String> {
    let mut per_layer: BTreeMap<usize, BTreeSet<&str>> = BTreeMap::new();
    for m in modules.keys() {
        let (i, rest) = split_layer(m).ok_or_else(|| {
            format!("{m} is outside the decoder layers, which MLX-LM's adapters cover")
        })?;
        per_layer.entry(i).or_default().insert(rest);
    }
    let (&first, keys) = per_layer.first_key_value().ok_or("no adapted modules")?;
    let last = *per_layer.keys().last().expect("non-empty");
    if per_layer.len() != last - first + 1 {
        return Err(format!(
            "the tensors adapt layers {:?}, which are not consecutive; MLX-LM adapts the last num_layers layers",
            per_layer.keys().collect::<Vec<_>>()
        ));
    }
    if let Some((i, other)) = per_layer.iter().find(|(_, k)| *k != keys) {
        return Err(format!(
            "layer {i} adapts {other:?} but layer {first} adapts {keys:?}; MLX-LM adapts the same modules in every layer"
        ));
    }
    Ok(first..last + 1)
}
