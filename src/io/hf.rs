//! Hugging Face model directories: `config.json` and the weights
//! (`model.safetensors`, or `model.safetensors.index.json` + shards).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::gguf::{GgufFile, GgufModel};
use super::safetensors::{read_safetensors, HostTensor, MappedSafetensors, TensorRef};
use crate::error::{Error, Result};
use crate::tensor::DType;

/// What the decoder needs from `config.json`: the Llama-family shape plus
/// the few switches that set Qwen3 and Gemma 3 apart.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// One of [`SUPPORTED_MODEL_TYPES`].
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    /// The base of the (full-attention) rotary frequencies, as `rope.theta`.
    pub rope_theta: f32,
    /// Rotary embedding of every layer (of the full-attention layers when
    /// `sliding_rope` is set).
    pub rope: RopeConfig,
    /// Gemma 3: the sliding-window layers' own rotary embedding.
    pub sliding_rope: Option<RopeConfig>,
    /// The leading dimensions of each head that rotate: head_dim, or less
    /// with Phi-3's `partial_rotary_factor`.
    pub rotary_dim: usize,
    /// Phi-3: q, k, v come from one `qkv_proj` and gate, up from one `gate_up_proj`.
    pub fused_projections: bool,
    /// Per layer: `Some(w)` where a query sees only the `w` latest keys
    /// (itself included), `None` for full causal attention.
    pub sliding_windows: Vec<Option<usize>>,
    /// Scores are `q·k × attention_scale`: 1/√head_dim, or Gemma's
    /// 1/√query_pre_attn_scalar.
    pub attention_scale: f32,
    /// Qwen3 and Gemma 3 normalise each head of q and k (RMSNorm over
    /// head_dim) before the rotation.
    pub qk_norm: bool,
    /// Gemma: every RMSNorm scales by `1 + w`, the embedding output is scaled
    /// by √hidden_size, and the attention and MLP outputs are normalised
    /// again before their residual adds.
    pub gemma_norms: bool,
    pub activation: Activation,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
    pub eos_token_ids: Vec<u32>,
    /// Gemma's `final_logit_softcapping`: logits become `c·tanh(logits / c)`.
    pub final_logit_softcapping: Option<f32>,
    /// The module path the decoder's layers, embedding and final norm sit
    /// under: [`CAUSAL_LM`], or [`GEMMA3_LANGUAGE_MODEL`] for a multimodal
    /// Gemma 3. The head is `lm_head.weight` in both.
    pub decoder_prefix: &'static str,
}

impl ModelConfig {
    /// A tensor or module of the decoder by its path below the prefix
    /// (`layers.0.self_attn.q_proj`, `embed_tokens.weight`).
    pub fn path(&self, below: &str) -> String {
        format!("{}{below}", self.decoder_prefix)
    }
}

/// The MLP's gate activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// x·sigmoid(x) (Llama, Qwen, Mistral).
    Silu,
    /// GELU's tanh approximation (Gemma's `gelu_pytorch_tanh`).
    GeluTanh,
}

pub const SUPPORTED_MODEL_TYPES: [&str; 7] = [
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "gemma3_text",
    "gemma3",
    "phi3",
];

/// Where a causal LM's decoder sits (`model.layers.N…`, `model.embed_tokens`).
pub const CAUSAL_LM: &str = "model.";
/// Where Gemma3ForConditionalGeneration's language model sits in memory (and
/// so in PEFT's keys): `model.language_model.layers.N…`.
pub const GEMMA3_LANGUAGE_MODEL: &str = "model.language_model.";

/// Gemma3TextConfig's defaults for the sizes a config may leave out
/// (Google's multimodal configs state only a few of them).
const GEMMA3_TEXT_DEFAULTS: [(&str, u64); 8] = [
    ("vocab_size", 262_208),
    ("hidden_size", 2304),
    ("intermediate_size", 9216),
    ("num_hidden_layers", 26),
    ("num_attention_heads", 8),
    ("num_key_value_heads", 4),
    ("head_dim", 256),
    ("max_position_embeddings", 131_072),
];

/// Sizes above this are no real model's (and would overflow products of two).
const MAX_SIZE: usize = 1 << 31;

/// How rotary frequencies are derived from the base (transformers'
/// `rope_type`, computed as its `ROPE_INIT_FUNCTIONS` do).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    Default,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Dynamic NTK: the base grows once a sequence is longer than
    /// max_position_embeddings. This tool never runs past that length, where
    /// it equals `Default`, so the tables are the default ones.
    Dynamic {
        factor: f64,
    },
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, a
    /// smooth ramp between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// YaRN: interpolation blended with extrapolation by a linear ramp over
    /// the dimensions, cos and sin scaled by `attention_factor`.
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: f64,
        truncate: bool,
    },
    /// Phi-3's LongRoPE: per-frequency divisors, `short_factor` while a
    /// forward ends within original_max_position_embeddings, `long_factor`
    /// past it (chosen per call, as transformers does); cos and sin scaled by
    /// `attention_factor`.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: f64,
        attention_factor: f64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl RopeConfig {
    fn default_with(theta: f64) -> RopeConfig {
        RopeConfig {
            theta,
            scaling: RopeScaling::Default,
        }
    }

    /// LongRoPE's tables for forwards that end past
    /// original_max_position_embeddings: the position where they take over
    /// and their inverse frequencies.
    pub fn long_inv_freq(&self, dim: usize) -> Option<(usize, Vec<f32>)> {
        let RopeScaling::LongRope {
            long_factor,
            original_max_position_embeddings,
            ..
        } = &self.scaling
        else {
            return None;
        };
        let long = RopeConfig {
            theta: self.theta,
            scaling: RopeScaling::LongRope {
                short_factor: long_factor.clone(),
                long_factor: long_factor.clone(),
                original_max_position_embeddings: *original_max_position_embeddings,
                attention_factor: 1.0,
            },
        };
        Some((
            *original_max_position_embeddings as usize,
            long.inv_freq(dim),
        ))
    }

    /// The inverse frequency of each rotated pair, for `dim` rotated
    /// dimensions, in f32 as transformers computes them (LongRoPE: the short ones).
    pub fn inv_freq(&self, dim: usize) -> Vec<f32> {
        let base = self.theta as f32;
        // base ** (arange(0, dim, 2) / dim), in f32.
        let pos_freqs: Vec<f32> = (0..dim / 2)
            .map(|i| base.powf((2 * i) as f32 / dim as f32))
            .collect();
        let plain = || pos_freqs.iter().map(|p| 1.0 / p).collect::<Vec<f32>>();
        match &self.scaling {
            RopeScaling::Default | RopeScaling::Dynamic { .. } => plain(),
            RopeScaling::LongRope { short_factor, .. } => pos_freqs
                .iter()
                .zip(short_factor)
                .map(|(p, f)| 1.0 / (*f as f32 * p))
                .collect(),
            RopeScaling::Linear { factor } => {
                plain().into_iter().map(|f| f / *factor as f32).collect()
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let (factor, low, high, old) =
                    (*factor as f32, *low_freq_factor, *high_freq_factor, *old);
                let (low_wavelen, high_wavelen) = ((old / low) as f32, (old / high) as f32);
                plain()
                    .into_iter()
                    .map(|f| {
                        let wavelen = (2.0 * std::f64::consts::PI) as f32 / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old as f32 / wavelen - low as f32) / (high - low) as f32;
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original,
                beta_fast,
                beta_slow,
                truncate,
                ..
            } => {
                let (factor, original) = (*factor, *original);
                let d = dim as f64;
                // The dimension at which a frequency turns `rotations` times over the original length.
                let correction_dim = |rotations: f64| {
                    d * (original / (rotations * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * self.theta.ln())
                };
                let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
                if *truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
                if low == high {
                    high += 0.001;
                }
                let (low, high) = (low as f32, high as f32);
                pos_freqs
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                        let extrapolation = 1.0 - ramp;
                        let interpolated = 1.0 / (factor as f32 * p);
                        interpolated * (1.0 - extrapolation) + (1.0 / p) * extrapolation
                    })
                    .collect()
            }
        }
    }

    /// The factor cos and sin are multiplied by (YaRN's and LongRoPE's
    /// attention factor; 1 otherwise).
    pub fn attention_scaling(&self) -> f32 {
        match self.scaling {
            RopeScaling::Yarn {
                attention_factor, ..
            }
            | RopeScaling::LongRope {
                attention_factor, ..
            } => attention_factor as f32,
            _ => 1.0,
        }
    }
}

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
    /// transformers 5 (`rope_parameters`, nested by layer type for Gemma 3)
    /// or older (`rope_scaling`).
    rope_parameters: Option<serde_json::Value>,
    rope_scaling: Option<serde_json::Value>,
    /// Gemma 3 before transformers 5: the sliding layers' base.
    rope_local_base_freq: Option<f64>,
    partial_rotary_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
    tie_word_embeddings: Option<bool>,
    max_position_embeddings: Option<usize>,
    eos_token_id: Option<OneOrMany>,
    hidden_act: Option<String>,
    hidden_activation: Option<String>,
    query_pre_attn_scalar: Option<f64>,
    /// Absent (transformers' default, 4096) differs from null (no window).
    #[serde(default, deserialize_with = "present")]
    sliding_window: Option<Option<usize>>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<usize>,
    sliding_window_pattern: Option<usize>,
    layer_types: Option<Vec<String>>,
    final_logit_softcapping: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    use_bidirectional_attention: Option<bool>,
}

/// One rotary-embedding dict (`rope_parameters` or `rope_scaling`).
#[derive(Deserialize, Default)]
struct RawRope {
    rope_type: Option<String>,
    /// The older spelling of `rope_type`.
    #[serde(rename = "type")]
    kind: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
    beta_fast: Option<f64>,
    beta_slow: Option<f64>,
    mscale: Option<f64>,
    mscale_all_dim: Option<f64>,
    attention_factor: Option<f64>,
    truncate: Option<bool>,
    partial_rotary_factor: Option<f64>,
    short_factor: Option<Vec<f64>>,
    long_factor: Option<Vec<f64>>,
}

/// A field that is present: `Some` of its value, even when that is null.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> std::result::Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

/// What a field error says: "field <name> ...".
type FieldResult<T> = std::result::Result<T, String>;

fn positive(name: &str, v: f64) -> FieldResult<f64> {
    if (v as f32).is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{name} {v} must be a positive number"))
    }
}

/// What a rope dict falls back on from the rest of config.json.
struct RopeDefaults {
    theta: f64,
    max_positions: f64,
    /// A top-level `original_max_position_embeddings` (Phi-3) wins over the dict's.
    original: Option<f64>,
}

/// A rope dict's fields, `field` naming it in errors (e.g. `rope_parameters.full_attention`).
fn parse_rope(
    value: &serde_json::Value,
    field: &str,
    defaults: &RopeDefaults,
) -> FieldResult<(RopeConfig, Option<f64>)> {
    let raw: RawRope = match value {
        serde_json::Value::Null => RawRope::default(),
        v => super::parse_json(&v.to_string()).map_err(|e| format!("{field}: {e}"))?,
    };
    let theta = match raw.rope_theta {
        Some(t) => positive(&format!("{field}.rope_theta"), t)?,
        None => positive("rope_theta", defaults.theta)?,
    };
    let kind = raw
        .rope_type
        .as_deref()
        .or(raw.kind.as_deref())
        .unwrap_or("default");
    let need = |name: &str, v: Option<f64>| match v {
        Some(v) => positive(&format!("{field}.{name}"), v),
        None => Err(format!(
            "{field}.{name} is missing (rope_type {kind:?} needs it)"
        )),
    };
    let original = positive(
        &format!("{field}.original_max_position_embeddings"),
        defaults
            .original
            .or(raw.original_max_position_embeddings)
            .unwrap_or(defaults.max_positions),
    )?;
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear {
            factor: need("factor", raw.factor)?,
        },
        "dynamic" => RopeScaling::Dynamic {
            factor: need("factor", raw.factor)?,
        },
        "llama3" => {
            let (low, high) = (
                need("low_freq_factor", raw.low_freq_factor)?,
                need("high_freq_factor", raw.high_freq_factor)?,
            );
            if high <= low {
                return Err(format!(
                    "{field}.high_freq_factor {high} must exceed low_freq_factor {low}"
                ));
            }
            RopeScaling::Llama3 {
                factor: need("factor", raw.factor)?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: original,
            }
        }
        "yarn" => {
            let factor = need("factor", raw.factor)?;
            // transformers' get_mscale: 0.1·m·ln(factor) + 1 above factor 1.
            let mscale = |m: f64| {
                if factor <= 1.0 {
                    1.0
                } else {
                    0.1 * m * factor.ln() + 1.0
                }
            };
            let attention_factor = match (raw.attention_factor, raw.mscale, raw.mscale_all_dim) {
                (Some(a), ..) => positive(&format!("{field}.attention_factor"), a)?,
                (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => mscale(m) / mscale(all),
                _ => mscale(1.0),
            };
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original,
                beta_fast: raw.beta_fast.filter(|b| *b != 0.0).unwrap_or(32.0),
                beta_slow: raw.beta_slow.filter(|b| *b != 0.0).unwrap_or(1.0),
                attention_factor,
                truncate: raw.truncate.unwrap_or(true),
            }
        }
        "longrope" => {
            let factors = |name: &str, v: &Option<Vec<f64>>| match v {
                Some(f) if f.iter().all(|x| positive("", *x).is_ok()) => Ok(f.clone()),
                Some(_) => Err(format!("{field}.{name} must hold positive numbers")),
                None => Err(format!("{field}.{name} is missing (rope_type \"longrope\" needs it)")),
            };
            let factor = raw.factor.unwrap_or(defaults.max_positions / original);
            let attention_factor = match raw.attention_factor {
                Some(a) => positive(&format!("{field}.attention_factor"), a)?,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / original.ln()).sqrt(),
            };
            RopeScaling::LongRope {
                short_factor: factors("short_factor", &raw.short_factor)?,
                long_factor: factors("long_factor", &raw.long_factor)?,
                original_max_position_embeddings: original,
                attention_factor,
            }
        }
        other => {
            return Err(format!(
                "{field}.rope_type {other:?} is not supported (supported: default, linear, dynamic, llama3, yarn, longrope)"
            ))
        }
    };
    Ok((RopeConfig { theta, scaling }, raw.partial_rotary_factor))
}

impl ModelConfig {
    /// The config of a model directory (`config.json`) or a GGUF file (its metadata).
    pub fn load(model: &Path) -> Result<ModelConfig> {
        if model.is_file() {
            return Self::from_gguf(&open_gguf(model)?);
        }
        let path = model.join("config.json");
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
        match arch.model_type.as_deref() {
            None => return Err(format_err("field model_type is missing".into())),
            Some("gemma3") => return Self::from_gemma3_multimodal(&text).map_err(format_err),
            Some(t) if !SUPPORTED_MODEL_TYPES.contains(&t) => {
                return Err(format_err(format!(
                    "model_type {t:?} is not supported (supported: {})",
                    SUPPORTED_MODEL_TYPES.join(", ")
                )));
            }
            Some(_) => {}
        }
        let fields = super::parse_json(&text).map_err(format_err)?;
        ModelConfig::from_fields(fields).map_err(format_err)
    }

    /// A config from its JSON fields, gemma3_text's left-out sizes taking
    /// Gemma3TextConfig's defaults.
    fn from_fields(
        mut fields: serde_json::Map<String, serde_json::Value>,
    ) -> FieldResult<ModelConfig> {
        if fields.get("model_type").is_some_and(|t| t == "gemma3_text") {
            for (name, value) in GEMMA3_TEXT_DEFAULTS {
                fields.entry(name).or_insert(value.into());
            }
        }
        let raw: RawConfig = super::parse_json(&serde_json::Value::Object(fields).to_string())?;
        ModelConfig::from_raw(raw)
    }

    /// Gemma 3 4B/12B/27B (`Gemma3ForConditionalGeneration`): the language
    /// model's config is `text_config`, a gemma3_text config (missing or null:
    /// all defaults, as transformers). The vision tower is left alone.
    fn from_gemma3_multimodal(text: &str) -> FieldResult<ModelConfig> {
        #[derive(Deserialize)]
        struct Multimodal {
            text_config: Option<serde_json::Map<String, serde_json::Value>>,
            eos_token_id: Option<OneOrMany>,
        }
        let outer: Multimodal = super::parse_json(text)?;
        let mut inner = outer.text_config.unwrap_or_default();
        match inner.get("model_type") {
            None => {
                inner.insert("model_type".into(), "gemma3_text".into());
            }
            Some(t) if t == "gemma3_text" => {}
            Some(t) => {
                return Err(format!(
                    "text_config.model_type {t} is not supported (a gemma3 config nests a \"gemma3_text\" one)"
                ))
            }
        }
        let mut c = ModelConfig::from_fields(inner).map_err(|e| format!("text_config: {e}"))?;
        c.model_type = "gemma3".into();
        c.decoder_prefix = GEMMA3_LANGUAGE_MODEL;
        // The top level's eos_token_id ([1, 106] in Google's configs) wins.
        match outer.eos_token_id {
            Some(OneOrMany::One(id)) => c.eos_token_ids = vec![id],
            Some(OneOrMany::Many(ids)) => c.eos_token_ids = ids,
            None => {}
        }
        Ok(c)
    }

    /// The config a GGUF file's metadata gives (as `config.json` would state it).
    pub fn from_gguf(model: &GgufModel) -> Result<ModelConfig> {
        let format_err = |message: String| Error::Format {
            path: model.file.path().to_string(),
            message: format!("{message} (in the config read from the GGUF metadata)"),
        };
        let raw: RawConfig = super::parse_json(&model.config.to_string()).map_err(format_err)?;
        ModelConfig::from_raw(raw).map_err(format_err)
    }

    /// Checks every value a forward pass depends on; errors name the field and value.
    fn from_raw(j: RawConfig) -> FieldResult<ModelConfig> {
        let gemma = j.model_type == "gemma3_text";
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
        let optional_sizes = [
            ("head_dim", j.head_dim),
            ("sliding_window", j.sliding_window.flatten()),
        ];
        let present = optional_sizes
            .into_iter()
            .filter_map(|(n, v)| Some((n, v?)));
        for (name, v) in sizes.into_iter().chain(present) {
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
            // Gemma 3's default (its configs always state it).
            None if gemma => 256,
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
        if let Some(v) = j.attn_logit_softcapping {
            return Err(format!(
                "attn_logit_softcapping {v} is not supported yet (only null)"
            ));
        }
        let final_logit_softcapping = match j.final_logit_softcapping {
            None => None,
            Some(c) if gemma => Some(positive("final_logit_softcapping", c)? as f32),
            Some(c) => {
                return Err(format!(
                "final_logit_softcapping {c} is read for gemma3_text only, not for model_type {}",
                j.model_type
            ))
            }
        };
        if j.use_bidirectional_attention == Some(true) {
            return Err(
                "use_bidirectional_attention true is not supported (a causal decoder only)".into(),
            );
        }
        let max_position_embeddings = j.max_position_embeddings.unwrap_or(4096);
        let (rope, sliding_rope, rotary_dim) =
            Self::ropes(&j, gemma, head_dim, max_position_embeddings)?;
        let sliding_windows = Self::sliding_windows(&j, gemma)?;
        let rms_norm_eps = j.rms_norm_eps.unwrap_or(1e-6);
        if !((rms_norm_eps as f32).is_finite() && rms_norm_eps as f32 > 0.0) {
            return Err(format!(
                "rms_norm_eps {rms_norm_eps} must be a positive number"
            ));
        }
        let attention_scale = match j.query_pre_attn_scalar {
            Some(s) if gemma => 1.0 / positive("query_pre_attn_scalar", s)?.sqrt(),
            None if gemma => 1.0 / 256f64.sqrt(),
            _ => 1.0 / (head_dim as f64).sqrt(),
        } as f32;
        let (act_field, act) = match (&j.hidden_activation, &j.hidden_act) {
            (Some(a), _) => ("hidden_activation", a.as_str()),
            (None, Some(a)) => ("hidden_act", a.as_str()),
            (None, None) if gemma => ("hidden_activation", "gelu_pytorch_tanh"),
            (None, None) => ("hidden_act", "silu"),
        };
        let activation = match act {
            "silu" | "swish" => Activation::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_tanh" => Activation::GeluTanh,
            other => {
                return Err(format!(
                    "{act_field} {other:?} is not supported (supported: silu, gelu_pytorch_tanh)"
                ))
            }
        };
        let eos_token_ids = match j.eos_token_id {
            Some(OneOrMany::One(id)) => vec![id],
            Some(OneOrMany::Many(ids)) => ids,
            None => Vec::new(),
        };
        Ok(ModelConfig {
            qk_norm: gemma || j.model_type == "qwen3",
            gemma_norms: gemma,
            fused_projections: j.model_type == "phi3",
            model_type: j.model_type,
            hidden_size: j.hidden_size,
            intermediate_size: j.intermediate_size,
            num_hidden_layers: j.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            vocab_size: j.vocab_size,
            rms_norm_eps: rms_norm_eps as f32,
            rope_theta: rope.theta as f32,
            rope,
            sliding_rope,
            rotary_dim,
            sliding_windows,
            attention_scale,
            activation,
            tie_word_embeddings: j.tie_word_embeddings.unwrap_or(gemma),
            max_position_embeddings,
            eos_token_ids,
            final_logit_softcapping,
            decoder_prefix: CAUSAL_LM,
        })
    }

    /// The rotary embeddings: one for every layer, or Gemma 3's pair (full
    /// and sliding attention), from either config layout; and how many
    /// dimensions of a head rotate.
    fn ropes(
        j: &RawConfig,
        gemma: bool,
        head_dim: usize,
        max_positions: usize,
    ) -> FieldResult<(RopeConfig, Option<RopeConfig>, usize)> {
        let null = serde_json::Value::Null;
        let (field, dict) = match (&j.rope_parameters, &j.rope_scaling) {
            (Some(p), _) if !p.is_null() => ("rope_parameters", p),
            (_, Some(s)) => ("rope_scaling", s),
            _ => ("rope_parameters", &null),
        };
        let mut defaults = RopeDefaults {
            theta: j.rope_theta.unwrap_or(if gemma { 1e6 } else { 1e4 }),
            max_positions: max_positions as f64,
            original: j.original_max_position_embeddings,
        };
        let nested = |key: &str| dict.get(key).filter(|_| field == "rope_parameters");
        let (rope, partial) = match nested("full_attention") {
            Some(full) => parse_rope(full, &format!("{field}.full_attention"), &defaults)?,
            None => parse_rope(dict, field, &defaults)?,
        };
        let rotary_dim = match partial.or(j.partial_rotary_factor) {
            None => head_dim,
            Some(1.0) => head_dim,
            Some(f) if j.model_type != "phi3" => {
                return Err(format!(
                    "partial_rotary_factor {f} is not supported for model_type {} (only 1.0)",
                    j.model_type
                ))
            }
            // transformers: int(head_dim * partial_rotary_factor) dimensions.
            Some(f) => match (head_dim as f64 * f) as usize {
                d if f > 0.0 && f <= 1.0 && d >= 2 && d.is_multiple_of(2) => d,
                d => {
                    return Err(format!(
                        "partial_rotary_factor {f} rotates {d} of head_dim {head_dim} dimensions (an even number from 2 is needed)"
                    ))
                }
            },
        };
        if let RopeScaling::LongRope {
            short_factor,
            long_factor,
            ..
        } = &rope.scaling
        {
            for (name, f) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                if f.len() != rotary_dim / 2 {
                    return Err(format!(
                        "{field}.{name} holds {} factors, but {rotary_dim} rotated dimensions need {}",
                        f.len(),
                        rotary_dim / 2
                    ));
                }
            }
        }
        if !gemma {
            return Ok((rope, None, rotary_dim));
        }
        defaults.theta = j.rope_local_base_freq.unwrap_or(1e4);
        let sliding = match nested("sliding_attention") {
            Some(s) => parse_rope(s, "rope_parameters.sliding_attention", &defaults)?.0,
            None => RopeConfig::default_with(defaults.theta),
        };
        Ok((rope, Some(sliding), rotary_dim))
    }

    /// Which layers attend through a sliding window, as transformers decides:
    /// `layer_types` when given, else each family's own rule.
    fn sliding_windows(j: &RawConfig, gemma: bool) -> FieldResult<Vec<Option<usize>>> {
        let layers = j.num_hidden_layers;
        let qwen = matches!(j.model_type.as_str(), "qwen2" | "qwen3");
        // Llama has no window; Qwen keeps one only with use_sliding_window;
        // Mistral, Gemma and Phi-3 always (absent: 4096, Phi-3 none).
        let window = match j.sliding_window {
            _ if j.model_type == "llama" => None,
            _ if qwen && j.use_sliding_window != Some(true) => None,
            None if j.model_type == "phi3" => None,
            None => Some(4096),
            Some(w) => w,
        };
        let sliding: Vec<bool> = match &j.layer_types {
            Some(types) => {
                if types.len() != layers {
                    return Err(format!(
                        "layer_types lists {} layers but num_hidden_layers is {layers}",
                        types.len()
                    ));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        "full_attention" => Ok(false),
                        "sliding_attention" => Ok(true),
                        other => Err(format!(
                            "layer_types holds {other:?} (supported: full_attention, sliding_attention)"
                        )),
                    })
                    .collect::<FieldResult<_>>()?
            }
            None if gemma => {
                let pattern = j.sliding_window_pattern.unwrap_or(6).max(1);
                (0..layers).map(|i| (i + 1) % pattern != 0).collect()
            }
            None if qwen => {
                let first = j.max_window_layers.unwrap_or(28);
                (0..layers)
                    .map(|i| window.is_some() && i >= first)
                    .collect()
            }
            None => vec![window.is_some(); layers],
        };
        sliding
            .into_iter()
            .map(|s| match (s, window) {
                (false, _) => Ok(None),
                (true, w) => Ok(w),
            })
            .collect()
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

/// A GGUF file opened as a model (architecture, config, tensor names);
/// errors name the file.
pub fn open_gguf(path: &Path) -> Result<GgufModel> {
    let file = GgufFile::open(path)?;
    let shown = file.path().to_string();
    GgufModel::from_file(file).map_err(|message| Error::Format {
        path: shown,
        message,
    })
}

/// transformers' renaming of multimodal checkpoints stored in the hub layout
/// (Gemma 3 as Google published it, and as transformers 5's save_pretrained
/// still writes it) to the module paths of the model in memory, which PEFT's
/// keys follow: `language_model.model.layers.0…` is `model.language_model.layers.0…`.
const STORED_TO_MEMORY: [(&str, &str); 4] = [
    ("language_model.lm_head.", "lm_head."),
    ("language_model.model.", "model.language_model."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
];

/// A stored tensor name as the model in memory names it.
pub fn name_in_memory(stored: &str) -> String {
    for (from, to) in STORED_TO_MEMORY {
        if let Some(rest) = stored.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    stored.to_string()
}

/// `tensors` keyed by their names in memory; a file that holds one tensor
/// under both names is refused.
fn renamed_to_memory<T>(
    tensors: BTreeMap<String, T>,
    what: &Path,
) -> Result<BTreeMap<String, (String, T)>> {
    let mut out = BTreeMap::new();
    for (stored, t) in tensors {
        let name = name_in_memory(&stored);
        if let Some((other, _)) = out.insert(name.clone(), (stored.clone(), t)) {
            return Err(Error::Format {
                path: what.display().to_string(),
                message: format!(
                    "tensors {other} and {stored} are both {name} (two layouts in one model)"
                ),
            });
        }
    }
    Ok(out)
}

/// Every weight tensor of a model directory (from one file or from the
/// shards a `model.safetensors.index.json` names; by their names in memory,
/// see [`name_in_memory`]) or of a GGUF file (decoded).
pub fn load_weights(model: &Path) -> Result<BTreeMap<String, HostTensor>> {
    if !model.is_file() {
        let stored = WeightFiles::find(model)?.read_all(read_safetensors)?;
        let renamed = renamed_to_memory(stored, model)?;
        return Ok(renamed.into_iter().map(|(n, (_, t))| (n, t)).collect());
    }
    let weights = MappedWeights::open(model)?;
    Ok(weights
        .names()
        .filter_map(|name| {
            let t = weights.get(name)?;
            let host = HostTensor {
                dtype: t.dtype,
                shape: t.shape.to_vec(),
                bytes: t.bytes.into_owned(),
            };
            Some((name.to_string(), host))
        })
        .collect())
}

/// A model's weights looked up by tensor name: a directory's safetensors
/// files mapped into memory (a loader uploads each tensor from the page
/// cache and never holds a copy of the whole file), or a GGUF file whose
/// tensors are decoded one at a time as asked for.
pub enum MappedWeights {
    Safetensors {
        files: Vec<MappedSafetensors>,
        /// Which file holds each tensor, by its name in memory
        /// ([`name_in_memory`]), and the name it is stored under.
        by_name: BTreeMap<String, (String, usize)>,
    },
    Gguf(Box<GgufModel>),
}

impl MappedWeights {
    /// Opens a model directory or a GGUF file.
    pub fn open(model: &Path) -> Result<MappedWeights> {
        if model.is_file() {
            return Ok(MappedWeights::Gguf(Box::new(open_gguf(model)?)));
        }
        let mut files = Vec::new();
        let stored = WeightFiles::find(model)?.read_all(|path| {
            let file = MappedSafetensors::open(path)?;
            let names = file.names().map(|n| (n.to_string(), files.len())).collect();
            files.push(file);
            Ok(names)
        })?;
        let by_name = renamed_to_memory(stored, model)?;
        Ok(MappedWeights::Safetensors { files, by_name })
    }

    /// A model's config and weights: a GGUF file is opened and parsed once
    /// for both; a directory's config.json is read first, as
    /// [`ModelConfig::load`] alone would.
    pub fn open_with_config(model: &Path) -> Result<(ModelConfig, MappedWeights)> {
        if model.is_file() {
            let gguf = open_gguf(model)?;
            return Ok((
                ModelConfig::from_gguf(&gguf)?,
                MappedWeights::Gguf(Box::new(gguf)),
            ));
        }
        Ok((ModelConfig::load(model)?, MappedWeights::open(model)?))
    }

    /// The tensor, borrowed from the map where it is stored as it is used.
    pub fn get(&self, name: &str) -> Option<TensorRef<'_>> {
        match self {
            MappedWeights::Safetensors { files, by_name } => {
                let (stored, file) = by_name.get(name)?;
                files[*file].get(stored)
            }
            MappedWeights::Gguf(model) => model.get(name),
        }
    }

    /// The name a tensor is stored under in a model directory's files
    /// (a GGUF file's tensors are known by their transformers names).
    pub fn stored_name<'a>(&'a self, name: &'a str) -> &'a str {
        match self {
            MappedWeights::Safetensors { by_name, .. } => {
                by_name.get(name).map_or(name, |(stored, _)| stored)
            }
            MappedWeights::Gguf(_) => name,
        }
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            MappedWeights::Safetensors { by_name, .. } => {
                Box::new(by_name.keys().map(String::as_str))
            }
            MappedWeights::Gguf(model) => Box::new(model.names()),
        }
    }

    /// A tensor's dtype (as `get` gives it) and shape, reading no tensor data.
    pub fn info(&self, name: &str) -> Option<(DType, &[usize])> {
        match self {
            MappedWeights::Safetensors { .. } => {
                let t = self.get(name)?;
                Some((t.dtype, t.shape))
            }
            MappedWeights::Gguf(model) => model.info(name),
        }
    }

    /// Every tensor's shape by name (no tensor data is read).
    pub fn shapes(&self) -> BTreeMap<&str, &[usize]> {
        self.names()
            .filter_map(|name| Some((name, self.info(name)?.1)))
            .collect()
    }
}
