//! A GGUF file read as a Hugging Face model, the way transformers'
//! `from_pretrained(..., gguf_file=...)` reads it: `config.json`'s fields
//! from the `<arch>.*` metadata, llama.cpp's tensor names mapped to
//! transformers' module names, and each tensor decoded to f32 with the two
//! changes llama.cpp's converter made undone (the q/k row permutation of the
//! `llama` architecture, Gemma's norms stored as `1 + w`).
//!
//! Where transformers' mapping misses something the file states, the file
//! wins: `attention.key_length` gives head_dim for every family (transformers
//! reads it for Gemma 3 only and falls back on the config class default,
//! wrong for Qwen3 files whose head_dim is not 128), and Llama 3.1+'s
//! `rope_freqs.weight` (per-frequency divisors llama.cpp applies) becomes the
//! rotary scaling it encodes instead of being dropped.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::{json, Map, Value as Json};

use super::{GgmlType, GgufFile, Value};
use crate::io::TensorRef;
use crate::tensor::DType;

/// The llama.cpp architectures read here and the transformers model type of each.
const ARCHITECTURES: [(&str, &str); 5] = [
    ("llama", "llama"),
    ("qwen2", "qwen2"),
    ("qwen3", "qwen3"),
    ("gemma3", "gemma3_text"),
    ("phi3", "phi3"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
    Phi3,
}

/// How a stored tensor becomes the Hugging Face one.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fix {
    None,
    /// Undo llama.cpp's interleaving of each head's rotary halves (q: the
    /// attention heads, k: the key-value heads).
    Unpermute {
        heads: usize,
    },
    /// Decoded to f32 and shifted: Gemma's norms are stored as `1 + w`
    /// (offset -1); a quantized vector (legal, though llama.cpp writes none)
    /// is decoded as is, since only matrices are read as blocks.
    Decode {
        offset: f32,
    },
}

/// A GGUF model: its file, its `config.json` as transformers would build
/// it, and the tensors by Hugging Face name.
pub struct GgufModel {
    pub file: GgufFile,
    /// The equivalent `config.json`.
    pub config: Json,
    /// Hugging Face name → (index in the file's tensor table, the fix to apply).
    tensors: BTreeMap<String, (usize, Fix)>,
}

fn fail<T>(message: String) -> std::result::Result<T, String> {
    Err(message)
}

impl GgufModel {
    /// Reads the architecture, hyper-parameters and tensor table; the error
    /// (without the path) names the key or tensor at fault.
    pub fn from_file(file: GgufFile) -> std::result::Result<GgufModel, String> {
        let arch = match file.get("general.architecture") {
            Some(Value::String(a)) => a.clone(),
            Some(_) => return fail("metadata general.architecture is not a string".into()),
            None => return fail("metadata general.architecture is missing".into()),
        };
        let Some(&(_, model_type)) = ARCHITECTURES.iter().find(|(a, _)| *a == arch) else {
            let known: Vec<&str> = ARCHITECTURES.iter().map(|(a, _)| *a).collect();
            return fail(format!(
                "general.architecture {arch:?} is not supported (supported: {})",
                known.join(", ")
            ));
        };
        let family = match arch.as_str() {
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "gemma3" => Family::Gemma3,
            _ => Family::Phi3,
        };
        let config = config_json(&file, &arch, model_type, family)?;
        let heads = config["num_attention_heads"].as_u64().unwrap_or(1) as usize;
        let kv_heads = config["num_key_value_heads"].as_u64().unwrap_or(1) as usize;
        let mut tensors = BTreeMap::new();
        for (i, t) in file.tensors.iter().enumerate() {
            // Read into the rotary scaling by config_json.
            if t.name == "rope_freqs.weight" {
                continue;
            }
            let Some((hf, module)) = hf_name(family, &t.name) else {
                return fail(format!(
                    "tensor {} has no counterpart in a transformers {model_type} model",
                    t.name
                ));
            };
            if let Err(id) = t.kind {
                return fail(format!(
                    "tensor {} is stored as type id {id}, which dora-wgpu does not read (it reads {})",
                    t.name,
                    GgmlType::ALL.map(GgmlType::name).join(", ")
                ));
            }
            let fix = match module {
                "attn_q" if family == Family::Llama => Fix::Unpermute { heads },
                "attn_k" if family == Family::Llama => Fix::Unpermute { heads: kv_heads },
                m if family == Family::Gemma3 && m.ends_with("norm") => {
                    Fix::Decode { offset: -1.0 }
                }
                _ if t.shape.len() != 2 && t.kind.is_ok_and(|k| k.dtype().block_values() > 1) => {
                    Fix::Decode { offset: 0.0 }
                }
                _ => Fix::None,
            };
            if let Fix::Unpermute { heads } = fix {
                let rows = t.shape.first().copied().unwrap_or(0);
                if heads == 0 || !rows.is_multiple_of(2 * heads) {
                    return fail(format!(
                        "tensor {} has {rows} rows, not a whole number of {heads} heads of rotary pairs",
                        t.name
                    ));
                }
            }
            tensors.insert(hf, (i, fix));
        }
        Ok(GgufModel {
            file,
            config,
            tensors,
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The dtype and shape `get` gives, without decoding anything.
    pub fn info(&self, name: &str) -> Option<(DType, &[usize])> {
        let &(i, fix) = self.tensors.get(name)?;
        let t = &self.file.tensors[i];
        let dtype = match fix {
            Fix::Decode { .. } => DType::F32,
            _ => t.kind.ok()?.dtype(),
        };
        Some((dtype, &t.shape))
    }

    /// Tensor `name` with transformers' values: floats and quantized blocks
    /// as stored (borrowed from the map; the GPU decodes blocks as it reads
    /// them), q/k rows un-permuted, Gemma's norms and any quantized vector
    /// decoded to f32.
    pub fn get(&self, name: &str) -> Option<TensorRef<'_>> {
        let &(i, fix) = self.tensors.get(name)?;
        let info = &self.file.tensors[i];
        let (_, bytes) = self.file.tensor_bytes(&info.name).ok()?;
        let kind = info.kind.ok()?;
        // Stored as the file has it (floats and blocks alike), rows reordered
        // where llama.cpp permuted them: blocks never span rows.
        let (dtype, bytes) = match fix {
            Fix::None => (kind.dtype(), Cow::Borrowed(bytes)),
            Fix::Unpermute { heads } => (
                kind.dtype(),
                Cow::Owned(unpermute(bytes, &info.shape, heads)),
            ),
            Fix::Decode { offset } => {
                let (_, values) = self.file.tensor_f32(&info.name).ok()?;
                let values: Vec<f32> = values.into_iter().map(|v| v + offset).collect();
                (
                    DType::F32,
                    Cow::Owned(bytemuck::cast_slice(&values).to_vec()),
                )
            }
        };
        Some(TensorRef {
            dtype,
            shape: &info.shape,
            bytes,
        })
    }

    /// The file's tensors in file order, each with its Hugging Face name
    /// (None for `rope_freqs.weight`, which no module holds).
    pub fn file_tensors(&self) -> Vec<(&super::TensorInfo, Option<&str>)> {
        let mut by_index: Vec<Option<&str>> = vec![None; self.file.tensors.len()];
        for (name, &(i, _)) in &self.tensors {
            by_index[i] = Some(name);
        }
        self.file.tensors.iter().zip(by_index).collect()
    }

    /// Values of Hugging Face tensor `name` laid out as the file stores
    /// them (llama.cpp's permutation and Gemma's `1 + w` redone).
    pub fn to_stored(&self, name: &str, values: Vec<f32>) -> Vec<f32> {
        let Some(&(i, fix)) = self.tensors.get(name) else {
            return values;
        };
        match fix {
            Fix::None => values,
            Fix::Decode { offset } => values.into_iter().map(|v| v - offset).collect(),
            Fix::Unpermute { heads } => permute(&values, &self.file.tensors[i].shape, heads),
        }
    }
}

/// transformers' `reverse_permute_weights`: rows viewed as
/// `[heads, half, 2, cols]` become `[heads, 2, half, cols]`. Works on the
/// stored bytes, whatever the row's format.
fn unpermute(bytes: &[u8], shape: &[usize], heads: usize) -> Vec<u8> {
    reorder_rows(bytes, shape[0], heads, false)
}

/// llama.cpp's permutation, the inverse of [`unpermute`], on f32 values.
fn permute(values: &[f32], shape: &[usize], heads: usize) -> Vec<f32> {
    let bytes = reorder_rows(bytemuck::cast_slice(values), shape[0], heads, true);
    bytemuck::pod_collect_to_vec(&bytes)
}

/// Row `h·2·half + 2i + j` of the file is row `h·2·half + j·half + i` of the
/// model; `to_file` picks the direction.
fn reorder_rows(data: &[u8], rows: usize, heads: usize, to_file: bool) -> Vec<u8> {
    let row = data.len() / rows.max(1);
    let half = rows / heads / 2;
    let mut out = vec![0; data.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let (file, model) = (h * 2 * half + i * 2 + j, h * 2 * half + j * half + i);
                let (from, to) = if to_file {
                    (model, file)
                } else {
                    (file, model)
                };
                out[to * row..(to + 1) * row].copy_from_slice(&data[from * row..(from + 1) * row]);
            }
        }
    }
    out
}

/// The Hugging Face tensor name of a llama.cpp one, and the llama.cpp module
/// name (`attn_q`, `ffn_norm`, ...) it came from.
fn hf_name(family: Family, gguf: &str) -> Option<(String, &str)> {
    let top = match gguf {
        "token_embd.weight" => Some(("model.embed_tokens.weight", "token_embd")),
        "output_norm.weight" => Some(("model.norm.weight", "output_norm")),
        "output.weight" => Some(("lm_head.weight", "output")),
        _ => None,
    };
    if let Some((hf, module)) = top {
        return Some((hf.to_string(), module));
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    use Family::*;
    let hf = match (module, family) {
        ("attn_norm", _) => "input_layernorm",
        ("attn_q", _) => "self_attn.q_proj",
        ("attn_k", _) => "self_attn.k_proj",
        ("attn_v", _) => "self_attn.v_proj",
        ("attn_output", _) => "self_attn.o_proj",
        ("attn_qkv", Phi3) => "self_attn.qkv_proj",
        ("attn_q_norm", Qwen3 | Gemma3) => "self_attn.q_norm",
        ("attn_k_norm", Qwen3 | Gemma3) => "self_attn.k_norm",
        ("ffn_norm", Gemma3) => "pre_feedforward_layernorm",
        ("ffn_norm", _) => "post_attention_layernorm",
        ("post_attention_norm", Gemma3) => "post_attention_layernorm",
        ("post_ffw_norm", Gemma3) => "post_feedforward_layernorm",
        ("ffn_up", Phi3) => "mlp.gate_up_proj",
        ("ffn_up", _) => "mlp.up_proj",
        ("ffn_gate", Llama | Qwen2 | Qwen3 | Gemma3) => "mlp.gate_proj",
        ("ffn_down", _) => "mlp.down_proj",
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{hf}.{suffix}"), module))
}

/// `config.json` from the metadata, with transformers' names.
fn config_json(
    file: &GgufFile,
    arch: &str,
    model_type: &str,
    family: Family,
) -> std::result::Result<Json, String> {
    let key = |k: &str| format!("{arch}.{k}");
    // A per-layer array is accepted when every layer has the same value.
    let number = |k: &str| -> std::result::Result<Option<f64>, String> {
        let full = key(k);
        let value = match file.get(&full) {
            None => return Ok(None),
            Some(Value::Array(items)) => match items.first() {
                Some(first) if items.iter().all(|v| v == first) => first,
                Some(_) => {
                    return fail(format!(
                        "metadata {full} differs between layers, which dora-wgpu does not support"
                    ))
                }
                None => return fail(format!("metadata {full} is an empty array")),
            },
            Some(v) => v,
        };
        match value.as_f64() {
            Some(v) => Ok(Some(v)),
            None => fail(format!("metadata {full} is not a number")),
        }
    };
    let size = |k: &str| -> std::result::Result<Option<u64>, String> {
        match number(k)? {
            None => Ok(None),
            Some(v) if v >= 0.0 && v.fract() == 0.0 => Ok(Some(v as u64)),
            Some(v) => fail(format!("metadata {} is {v}, not a whole number", key(k))),
        }
    };
    let required = |k: &str| -> std::result::Result<u64, String> {
        size(k)?.ok_or_else(|| format!("metadata {} is missing", key(k)))
    };
    let hidden = required("embedding_length")?;
    let heads = required("attention.head_count")?;
    let mut c = Map::new();
    c.insert("model_type".into(), json!(model_type));
    c.insert("hidden_size".into(), json!(hidden));
    c.insert("num_hidden_layers".into(), json!(required("block_count")?));
    c.insert(
        "intermediate_size".into(),
        json!(required("feed_forward_length")?),
    );
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert(
        "num_key_value_heads".into(),
        json!(size("attention.head_count_kv")?.unwrap_or(heads)),
    );
    let rotary = size("rope.dimension_count")?;
    let head_dim = match (size("attention.key_length")?, family) {
        (Some(d), _) => Some(d),
        (None, Family::Llama) => rotary,
        (None, _) => None,
    };
    if let Some(d) = head_dim {
        c.insert("head_dim".into(), json!(d));
    }
    // Phi-3 rotates the leading rope.dimension_count dimensions of each head.
    if let (Family::Phi3, Some(r)) = (family, rotary) {
        let head_dim = head_dim.unwrap_or(hidden.checked_div(heads).unwrap_or(0));
        if head_dim > 0 && r != head_dim {
            c.insert(
                "partial_rotary_factor".into(),
                json!(r as f64 / head_dim as f64),
            );
        }
    }
    if let Some(eps) = number("attention.layer_norm_rms_epsilon")? {
        c.insert("rms_norm_eps".into(), json!(eps));
    }
    if let Some(theta) = number("rope.freq_base")? {
        c.insert("rope_theta".into(), json!(theta));
    }
    if let Some(n) = size("context_length")? {
        c.insert("max_position_embeddings".into(), json!(n));
    }
    if family == Family::Gemma3 {
        if let Some(w) = size("attention.sliding_window")? {
            c.insert("sliding_window".into(), json!(w));
        }
        // llama.cpp scales Gemma 3's scores by 1/sqrt(key_length) (27B aside,
        // which stores no different value); transformers reads no key for it.
        if let Some(d) = head_dim {
            c.insert("query_pre_attn_scalar".into(), json!(d));
        }
    }
    // Passed on so config.json's rules apply: Gemma's final cap is read,
    // the attention cap is refused.
    for k in ["final_logit_softcapping", "attn_logit_softcapping"] {
        if let Some(v) = number(k)? {
            c.insert(k.into(), json!(v));
        }
    }
    let embed = file
        .tensor("token_embd.weight")
        .ok_or("tensor token_embd.weight is missing")?;
    // The embedding's rows are the vocabulary size the weights were made for.
    c.insert("vocab_size".into(), json!(embed.shape[0]));
    c.insert(
        "tie_word_embeddings".into(),
        json!(file.tensor("output.weight").is_none()),
    );
    let eos: Vec<u64> = ["eos", "eot", "eom"]
        .iter()
        .filter_map(|k| file.get(&format!("tokenizer.ggml.{k}_token_id"))?.as_u64())
        .fold(Vec::new(), |mut ids, id| {
            if !ids.contains(&id) {
                ids.push(id);
            }
            ids
        });
    if !eos.is_empty() {
        c.insert("eos_token_id".into(), json!(eos));
    }
    if let Some(rope) = rope_scaling(file, arch, &c)? {
        c.insert("rope_scaling".into(), rope);
    }
    for t in ["rope_factors_long.weight", "rope_factors_short.weight"] {
        if file.tensor(t).is_some() {
            return fail(format!(
                "tensor {t} (Phi-3 LongRoPE) is not supported from GGUF yet; use the Hugging Face directory"
            ));
        }
    }
    Ok(Json::Object(c))
}

/// The rotary scaling the file states: `rope.scaling.type` (none, linear),
/// or the `rope_freqs.weight` divisors written for Llama 3.1+ (llama.cpp
/// divides each frequency by its factor: LongRoPE's form with one table).
fn rope_scaling(
    file: &GgufFile,
    arch: &str,
    config: &Map<String, Json>,
) -> std::result::Result<Option<Json>, String> {
    if file.tensor("rope_freqs.weight").is_some() {
        let (shape, factors) = file
            .tensor_f32("rope_freqs.weight")
            .map_err(|e| e.to_string())?;
        if shape.len() != 1 {
            return fail(format!(
                "tensor rope_freqs.weight has shape {shape:?}, expected one dimension"
            ));
        }
        let positions = config
            .get("max_position_embeddings")
            .cloned()
            .unwrap_or(json!(4096));
        return Ok(Some(json!({
            "rope_type": "longrope",
            "short_factor": factors,
            "long_factor": factors,
            "original_max_position_embeddings": positions,
            "factor": 1.0,
            "attention_factor": 1.0,
        })));
    }
    let kind_key = format!("{arch}.rope.scaling.type");
    let kind = match file.get(&kind_key) {
        None => return Ok(None),
        Some(v) => v
            .as_str()
            .ok_or_else(|| format!("metadata {kind_key} is not a string"))?,
    };
    let factor_key = format!("{arch}.rope.scaling.factor");
    let factor = file.get(&factor_key).and_then(Value::as_f64);
    match kind {
        "none" => Ok(None),
        "linear" => match factor {
            Some(f) => Ok(Some(json!({"rope_type": "linear", "factor": f}))),
            None => fail(format!(
                "metadata {factor_key} is missing (rope scaling linear needs it)"
            )),
        },
        other => fail(format!(
            "metadata {kind_key} {other:?} is not supported from GGUF (supported: none, linear)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp's permute: rows [heads, 2, half] → [heads, half, 2].
        let (heads, half, cols) = (2, 3, 2);
        let rows = heads * 2 * half;
        let original: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let permuted = permute(&original, &[rows, cols], heads);
        // Row h·2·half + 2i + j of the file is row h·2·half + j·half + i of the model.
        assert_eq!(permuted[cols * 2], original[cols]);
        assert_ne!(permuted, original);
        let back = unpermute(bytemuck::cast_slice(&permuted), &[rows, cols], heads);
        assert_eq!(bytemuck::pod_collect_to_vec::<u8, f32>(&back), original);
    }

    #[test]
    fn names_follow_each_family() {
        let n = |f, g| hf_name(f, g).map(|(h, _)| h);
        assert_eq!(
            n(Family::Gemma3, "blk.3.ffn_norm.weight").as_deref(),
            Some("model.layers.3.pre_feedforward_layernorm.weight")
        );
        assert_eq!(
            n(Family::Llama, "blk.3.ffn_norm.weight").as_deref(),
            Some("model.layers.3.post_attention_layernorm.weight")
        );
        assert_eq!(
            n(Family::Phi3, "blk.0.ffn_up.weight").as_deref(),
            Some("model.layers.0.mlp.gate_up_proj.weight")
        );
        assert_eq!(n(Family::Llama, "blk.0.attn_q_norm.weight"), None);
        assert_eq!(n(Family::Llama, "blk.x.attn_q.weight"), None);
    }
}
