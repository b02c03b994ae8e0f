//! A Llama-family decoder (Llama 2/3, SmolLM/SmolLM2, TinyLlama, Qwen2,
//! Mistral) loaded from a Hugging Face directory, with LoRA/DoRA adapters on
//! its seven projections and a KV cache for generation.
//!
//! Frozen weights stay in their stored dtype (f32, bf16 or f16) on the GPU.

use std::collections::BTreeMap;
use std::path::Path;

use super::dora::DoraLinear;
use super::linear::Linear;
use super::lora::{AdapterOptions, LoraLinear};
use crate::autograd::{checkpoint, no_grad};
use crate::error::{arg_err, shape_err, Error, Result};
use crate::gpu::Gpu;
use crate::io::hf::{MappedWeights, ModelConfig};
use crate::io::{AdapterConfig, AdapterWeights, TensorRef};
use crate::ops::{self, RopeTables, Transpose};
use crate::tensor::{DType, Tensor};

/// The seven adaptable projections of each decoder layer, with their parent module.
pub const PROJECTIONS: [(&str, &str); 7] = [
    ("self_attn", "q_proj"),
    ("self_attn", "k_proj"),
    ("self_attn", "v_proj"),
    ("self_attn", "o_proj"),
    ("mlp", "gate_proj"),
    ("mlp", "up_proj"),
    ("mlp", "down_proj"),
];

/// A linear projection, frozen or carrying an adapter.
#[derive(Clone, Debug)]
pub enum Projection {
    Frozen(Linear),
    Lora(LoraLinear),
    Dora(DoraLinear),
}

impl Projection {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Projection::Frozen(l) => l.forward(x),
            Projection::Lora(l) => l.forward(x),
            Projection::Dora(l) => l.forward(x),
        }
    }

    /// Training forward: the adapter's dropout (if any) with this seed.
    pub fn forward_train(&self, x: &Tensor, dropout_seed: u32) -> Result<Tensor> {
        match self {
            Projection::Frozen(l) => l.forward(x),
            Projection::Lora(l) => l.forward_train(x, dropout_seed),
            Projection::Dora(l) => l.forward_train(x, dropout_seed),
        }
    }

    pub fn base(&self) -> &Linear {
        match self {
            Projection::Frozen(l) => l,
            Projection::Lora(l) => &l.base,
            Projection::Dora(l) => &l.base,
        }
    }

    pub fn parameters(&self) -> Vec<Tensor> {
        match self {
            Projection::Frozen(_) => Vec::new(),
            Projection::Lora(l) => l.parameters(),
            Projection::Dora(l) => l.parameters(),
        }
    }

    /// The weight with any adapter folded in, in the base dtype.
    pub fn merged_weight(&self) -> Result<Tensor> {
        match self {
            Projection::Frozen(l) => Ok(l.weight.clone()),
            Projection::Lora(l) => l.merged_weight(),
            Projection::Dora(l) => Ok(l.merge()?.0),
        }
    }
}

#[derive(Clone, Debug)]
pub struct DecoderLayer {
    pub input_norm: Tensor,
    pub post_attention_norm: Tensor,
    /// q, k, v, o, gate, up, down — in [`PROJECTIONS`] order.
    pub projections: Vec<Projection>,
}

impl DecoderLayer {
    /// The trainable tensors of this layer's adapters.
    pub fn parameters(&self) -> Vec<Tensor> {
        self.projections
            .iter()
            .flat_map(Projection::parameters)
            .collect()
    }
}

/// Keys and values of earlier positions, one pair per layer, for generation
/// (batch 1). Preallocated to `capacity` positions.
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

pub struct Llama {
    pub config: ModelConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub final_norm: Tensor,
    /// None when the head is tied to the embedding.
    pub lm_head: Option<Tensor>,
    /// Training keeps only each decoder layer's input and recomputes the
    /// layer during backward: less memory for long sequences, one more forward.
    pub grad_checkpoint: bool,
    rope: RopeTables,
}

/// What a decoder layer's forward needs besides the layer and its input.
#[derive(Clone)]
struct LayerContext {
    heads: usize,
    kv_heads: usize,
    eps: f32,
    /// Position of the first token (earlier ones are in the KV cache).
    offset: usize,
    rope: RopeTables,
    dropout_seed: Option<u32>,
}

/// One decoder layer: attention and MLP blocks, each with its residual.
/// `kv` holds this layer's cached keys and values during generation.
fn decoder_layer(
    layer: &DecoderLayer,
    li: usize,
    x: &Tensor,
    ctx: &LayerContext,
    kv: Option<&(Tensor, Tensor)>,
) -> Result<Tensor> {
    let project = |j: usize, x: &Tensor| match ctx.dropout_seed {
        None => layer.projections[j].forward(x),
        Some(seed) => {
            let module = (li * PROJECTIONS.len() + j) as u32;
            let module_seed = seed.wrapping_mul(0x9E37_79B9).wrapping_add(module);
            layer.projections[j].forward_train(x, module_seed)
        }
    };
    let (heads, kv_heads, offset) = (ctx.heads, ctx.kv_heads, ctx.offset);
    let h = ops::rms_norm(x, &layer.input_norm, ctx.eps)?;
    let q = ops::rope(&project(0, &h)?, heads, offset, &ctx.rope)?;
    let k = ops::rope(&project(1, &h)?, kv_heads, offset, &ctx.rope)?;
    let v = project(2, &h)?;
    let attn = match kv {
        None => ops::causal_attention(&q, &k, &v, heads, kv_heads, 0)?,
        Some((kc, vc)) => {
            let (k_all, v_all) = (append(kc, &k, offset)?, append(vc, &v, offset)?);
            ops::causal_attention(&q, &k_all, &v_all, heads, kv_heads, offset)?
        }
    };
    let x = ops::add(x, &project(3, &attn)?)?;
    let h = ops::rms_norm(&x, &layer.post_attention_norm, ctx.eps)?;
    let gated = ops::mul(&ops::silu(&project(4, &h)?)?, &project(5, &h)?)?;
    ops::add(&x, &project(6, &gated)?)
}

/// The `[out, in]` shapes of one decoder layer's seven projections.
fn projection_shapes(c: &ModelConfig) -> [[usize; 2]; 7] {
    let (q, kv) = (
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
    );
    let (d, f) = (c.hidden_size, c.intermediate_size);
    [[q, d], [kv, d], [kv, d], [d, q], [f, d], [f, d], [d, f]]
}

/// Checks `config.json` against the tensors the weight files hold (`held`:
/// shapes by name, from the headers): the layer count, and every tensor the
/// config implies by name and shape. Runs before anything large is read or
/// allocated, so a config that does not fit its weights
/// (`num_hidden_layers: 1000000000`, a huge `vocab_size`) is one error, not
/// an allocation failure; the loader may then take each tensor as it is.
pub fn check_weights_fit(
    c: &ModelConfig,
    dir: &Path,
    held: &BTreeMap<&str, &[usize]>,
) -> Result<()> {
    let fail = |message: String| {
        Err(Error::Format {
            path: dir.join("config.json").display().to_string(),
            message,
        })
    };
    let layers_held = held
        .keys()
        .filter_map(|k| {
            k.strip_prefix("model.layers.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |last| last + 1);
    if layers_held != c.num_hidden_layers {
        return fail(format!(
            "num_hidden_layers is {} but the weights hold {layers_held} layers",
            c.num_hidden_layers
        ));
    }
    let mut expected = vec![
        (
            "model.embed_tokens.weight".to_string(),
            vec![c.vocab_size, c.hidden_size],
        ),
        ("model.norm.weight".to_string(), vec![c.hidden_size]),
    ];
    if !c.tie_word_embeddings {
        expected.push(("lm_head.weight".into(), vec![c.vocab_size, c.hidden_size]));
    }
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            expected.push((format!("{p}.{norm}.weight"), vec![c.hidden_size]));
        }
        for ((parent, name), shape) in PROJECTIONS.iter().zip(projection_shapes(c)) {
            expected.push((format!("{p}.{parent}.{name}.weight"), shape.to_vec()));
        }
    }
    for (name, shape) in expected {
        match held.get(name.as_str()) {
            None if name == "lm_head.weight" => {
                return fail(
                    "tensor lm_head.weight is missing and tie_word_embeddings is false".into(),
                )
            }
            None => {
                return fail(format!(
                    "implies tensor {name}, which the weights do not hold"
                ))
            }
            Some(held) if *held != shape => {
                return fail(format!(
                    "implies {name} of shape {shape:?}, but the weights hold {held:?}"
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// A tensor [`check_weights_fit`] has already matched by name and shape,
/// checked for NaN and infinity.
fn take<'a>(weights: &'a MappedWeights, name: &str, dir: &Path) -> Result<TensorRef<'a>> {
    let t = weights.get(name).ok_or_else(|| Error::Format {
        path: dir.display().to_string(),
        message: format!("tensor {name} is missing from the model weights"),
    })?;
    check_finite(&t, name, dir)?;
    Ok(t)
}

/// A NaN or infinity in a weight makes every loss NaN: refuse it at load, naming the tensor.
fn check_finite(t: &TensorRef, name: &str, dir: &Path) -> Result<()> {
    match t.first_non_finite() {
        Some(i) => Err(Error::Format {
            path: dir.display().to_string(),
            message: format!(
                "tensor {name} holds a non-finite value (NaN or infinity) at element {i}"
            ),
        }),
        None => Ok(()),
    }
}

impl Llama {
    /// Loads `config.json` and the weights of a Hugging Face model directory.
    pub fn load(gpu: &Gpu, dir: &Path) -> Result<Llama> {
        let config = ModelConfig::load(dir)?;
        let w = MappedWeights::open(dir)?;
        check_weights_fit(&config, dir, &w.shapes())?;
        let c = &config;
        let up = |t: TensorRef| t.to_gpu(gpu);
        let embed_tokens = up(take(&w, "model.embed_tokens.weight", dir)?)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut projections = Vec::with_capacity(7);
            for ((parent, name), [out_f, _]) in PROJECTIONS.iter().zip(projection_shapes(c)) {
                let module = format!("{p}.{parent}.{name}");
                let weight = up(take(&w, &format!("{module}.weight"), dir)?)?;
                // Biases exist where the checkpoint has them (Qwen2's q/k/v, attention_bias models).
                let bias = match w.get(&format!("{module}.bias")) {
                    Some(b) if b.shape != [out_f] => {
                        return Err(Error::Format {
                            path: dir.display().to_string(),
                            message: format!(
                                "tensor {module}.bias has shape {:?}, expected [{out_f}]",
                                b.shape
                            ),
                        })
                    }
                    Some(b) => {
                        check_finite(&b, &format!("{module}.bias"), dir)?;
                        Some(up(b)?)
                    }
                    None => None,
                };
                projections.push(Projection::Frozen(Linear::new(weight, bias)?));
            }
            layers.push(DecoderLayer {
                input_norm: up(take(&w, &format!("{p}.input_layernorm.weight"), dir)?)?,
                post_attention_norm: up(take(
                    &w,
                    &format!("{p}.post_attention_layernorm.weight"),
                    dir,
                )?)?,
                projections,
            });
        }
        let final_norm = up(take(&w, "model.norm.weight", dir)?)?;
        // check_weights_fit required an untied head of the right shape.
        let lm_head = match c.tie_word_embeddings {
            false => Some(up(take(&w, "lm_head.weight", dir)?)?),
            true => None,
        };
        let positions = c.max_position_embeddings.clamp(1, 1 << 17);
        let rope = RopeTables::new(gpu, c.rope_theta, c.head_dim, positions)?;
        Ok(Llama {
            config,
            embed_tokens,
            layers,
            final_norm,
            lm_head,
            grad_checkpoint: false,
            rope,
        })
    }

    /// Refuses a token id the embedding has no row for (the GPU would read
    /// zeros and score it as if it were a real token); `what` names the ids.
    pub fn check_token_ids(&self, what: &str, ids: &[u32]) -> Result<()> {
        let vocab = self.config.vocab_size;
        match ids.iter().position(|&id| id as usize >= vocab) {
            Some(p) => arg_err!(
                "{what}: token id {} at position {p} is outside the model's vocabulary (vocab_size {vocab})",
                ids[p]
            ),
            None => Ok(()),
        }
    }

    /// `[out, in]` of every adaptable projection, by module path.
    pub fn linear_shapes(&self) -> BTreeMap<String, (usize, usize)> {
        let mut out = BTreeMap::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for ((parent, name), p) in PROJECTIONS.iter().zip(&layer.projections) {
                let b = p.base();
                out.insert(
                    format!("model.layers.{i}.{parent}.{name}"),
                    (b.out_features(), b.in_features()),
                );
            }
        }
        out
    }

    /// Puts a PEFT adapter's LoRA or DoRA layers on the modules it names.
    /// Fails, naming the tensor and both shapes, if it was made for another model.
    pub fn attach_adapter(&mut self, adapter: &AdapterWeights) -> Result<()> {
        adapter.check_fits(&self.linear_shapes())?;
        let cfg = &adapter.config;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for ((parent, name), slot) in PROJECTIONS.iter().zip(layer.projections.iter_mut()) {
                let module = format!("model.layers.{i}.{parent}.{name}");
                let Some(weights) = adapter.modules.get(&module) else {
                    continue;
                };
                let base = slot.base().clone();
                let scale = cfg.scaling(&module);
                *slot = if cfg.use_dora {
                    Projection::Dora(DoraLinear::from_adapter(
                        base,
                        weights,
                        scale,
                        cfg.lora_dropout,
                    )?)
                } else {
                    Projection::Lora(LoraLinear::from_adapter(
                        base,
                        weights,
                        scale,
                        cfg.lora_dropout,
                    )?)
                };
            }
        }
        Ok(())
    }

    /// Puts fresh adapters (A kaiming-uniform, B = 0, so the model is
    /// unchanged) on every projection whose name is in `targets`
    /// (e.g. "q_proj"; all seven when empty). Each module gets its own seed.
    pub fn add_adapters(
        &mut self,
        options: &AdapterOptions,
        use_dora: bool,
        targets: &[&str],
        seed: u64,
    ) -> Result<()> {
        let all = 0..self.layers.len();
        self.add_adapters_to_layers(options, use_dora, targets, all, seed)
    }

    /// [`Llama::add_adapters`] restricted to the decoder layers in `layers`
    /// (MLX-LM's `--num-layers` adapts only the last few).
    pub fn add_adapters_to_layers(
        &mut self,
        options: &AdapterOptions,
        use_dora: bool,
        targets: &[&str],
        layers: std::ops::Range<usize>,
        seed: u64,
    ) -> Result<()> {
        if layers.end > self.layers.len() || layers.is_empty() {
            arg_err!(
                "adapter layers {layers:?} do not fit a model with {} layers",
                self.layers.len()
            );
        }
        for t in targets {
            if !PROJECTIONS.iter().any(|(_, name)| name == t) {
                shape_err!("unknown target module {t:?}; expected some of q_proj k_proj v_proj o_proj gate_proj up_proj down_proj");
            }
        }
        for (i, layer) in self.layers.iter_mut().enumerate() {
            if !layers.contains(&i) {
                continue;
            }
            for (j, ((_, name), slot)) in PROJECTIONS
                .iter()
                .zip(layer.projections.iter_mut())
                .enumerate()
            {
                if !targets.is_empty() && !targets.contains(name) {
                    continue;
                }
                let base = slot.base().clone();
                let module_seed = seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add((i * PROJECTIONS.len() + j) as u64);
                *slot = if use_dora {
                    Projection::Dora(DoraLinear::new(base, options, module_seed)?)
                } else {
                    Projection::Lora(LoraLinear::new(base, options, module_seed)?)
                };
            }
        }
        Ok(())
    }

    /// The adapters' current values as a PEFT adapter described by `config`.
    pub fn adapter_weights(&self, config: AdapterConfig) -> Result<AdapterWeights> {
        let mut modules = BTreeMap::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for ((parent, name), p) in PROJECTIONS.iter().zip(&layer.projections) {
                let m = match p {
                    Projection::Frozen(_) => continue,
                    Projection::Lora(l) => l.to_adapter()?,
                    Projection::Dora(l) => l.to_adapter()?,
                };
                modules.insert(format!("model.layers.{i}.{parent}.{name}"), m);
            }
        }
        Ok(AdapterWeights { config, modules })
    }

    /// All trainable tensors (the adapters' A, B and m).
    pub fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    /// The trainable tensors with their PEFT key names (without the
    /// `base_model.model.` prefix), e.g. `model.layers.0.self_attn.q_proj.lora_A.weight`.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for ((parent, name), p) in PROJECTIONS.iter().zip(&layer.projections) {
                let module = format!("model.layers.{i}.{parent}.{name}");
                let suffixes: &[&str] = match p {
                    Projection::Frozen(_) => &[],
                    Projection::Lora(_) => &["lora_A.weight", "lora_B.weight"],
                    Projection::Dora(_) => {
                        &["lora_A.weight", "lora_B.weight", "lora_magnitude_vector"]
                    }
                };
                for (suffix, t) in suffixes.iter().zip(p.parameters()) {
                    out.push((format!("{module}.{suffix}"), t));
                }
            }
        }
        out
    }

    /// An empty cache for up to `capacity` positions (batch 1).
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        let c = &self.config;
        let width = c.num_key_value_heads * c.head_dim;
        let gpu = self.embed_tokens.gpu();
        let layers = (0..c.num_hidden_layers)
            .map(|_| {
                Ok((
                    Tensor::zeros(gpu, &[capacity, width], DType::F32)?,
                    Tensor::zeros(gpu, &[capacity, width], DType::F32)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(KvCache {
            layers,
            len: 0,
            capacity,
        })
    }

    /// Hidden states after the final norm, [B, T, hidden], for token ids
    /// [B, T] (i32). With a cache (B must be 1) the ids continue the cached
    /// positions and their keys and values are appended.
    pub fn forward_hidden(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        self.forward_impl(ids, cache, None)
    }

    /// The training forward of [`Llama::forward_hidden`]: adapters apply their
    /// dropout, each module with its own seed derived from `dropout_seed`.
    pub fn forward_hidden_train(&self, ids: &Tensor, dropout_seed: u32) -> Result<Tensor> {
        self.forward_impl(ids, None, Some(dropout_seed))
    }

    fn forward_impl(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        dropout_seed: Option<u32>,
    ) -> Result<Tensor> {
        let &[batch, seq] = ids.shape() else {
            shape_err!(
                "model input ids must be [batch, seq], got {:?}",
                ids.shape()
            );
        };
        let c = &self.config;
        let offset = cache.as_ref().map_or(0, |k| k.len);
        if let Some(k) = &cache {
            if batch != 1 {
                shape_err!("generation with a KV cache takes one sequence, got batch {batch}");
            }
            if k.len + seq > k.capacity {
                shape_err!(
                    "KV cache holds {} positions; {} more do not fit",
                    k.capacity,
                    seq
                );
            }
        }
        if offset + seq > self.rope.positions {
            shape_err!(
                "{} positions exceed max_position_embeddings {}",
                offset + seq,
                self.rope.positions
            );
        }
        let ctx = LayerContext {
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            eps: c.rms_norm_eps,
            offset,
            rope: self.rope.clone(),
            dropout_seed,
        };
        let mut x = ops::embedding(&self.embed_tokens, ids)?;
        for (li, layer) in self.layers.iter().enumerate() {
            let kv = cache.as_deref().map(|k| &k.layers[li]);
            let params = match kv {
                None if self.grad_checkpoint => layer.parameters(),
                _ => Vec::new(),
            };
            x = if params.is_empty() {
                decoder_layer(layer, li, &x, &ctx, kv)?
            } else {
                let (layer, ctx) = (layer.clone(), ctx.clone());
                checkpoint(&x, &params, move |x| {
                    decoder_layer(&layer, li, x, &ctx, None)
                })?
            };
        }
        if let Some(kv) = cache {
            kv.len += seq;
        }
        ops::rms_norm(&x, &self.final_norm, c.rms_norm_eps)
    }

    /// Logits [.., vocab] for hidden states [.., hidden].
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        ops::matmul_ex(
            hidden,
            self.lm_head.as_ref().unwrap_or(&self.embed_tokens),
            Transpose::NT,
        )
    }

    /// Summed negative log-likelihood and the number of scored targets, for
    /// hidden states [T, hidden] and i32 targets [T] (ignore index −100),
    /// computed over chunks of rows so [T, vocab] logits never exist at once.
    pub fn nll_sum(
        &self,
        hidden: &Tensor,
        targets: &[i32],
        chunk_rows: usize,
    ) -> Result<(f64, usize)> {
        let _g = no_grad();
        let rows = hidden.shape()[0];
        if targets.len() != rows {
            shape_err!("nll: {} targets for {rows} positions", targets.len());
        }
        // The chunked loss is the mean over scored targets: scale it back to a sum.
        let tokens = targets.iter().filter(|&&t| t >= 0).count();
        if tokens == 0 {
            return Ok((0.0, 0));
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        let mean = ops::lm_head_cross_entropy(hidden, head, targets, chunk_rows)?.item()?;
        Ok((mean as f64 * tokens as f64, tokens))
    }

    /// The projections' weights with adapters folded in (base dtype), by
    /// parameter name, for writing a merged model.
    pub fn merged_weights(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for ((parent, name), p) in PROJECTIONS.iter().zip(&layer.projections) {
                if !matches!(p, Projection::Frozen(_)) {
                    out.insert(
                        format!("model.layers.{i}.{parent}.{name}.weight"),
                        p.merged_weight()?,
                    );
                }
            }
        }
        Ok(out)
    }
}

/// Writes `new` [1, T, w] into rows offset.. of `cache` [capacity, w] and
/// returns a view of the filled rows as [1, offset + T, w].
fn append(cache: &Tensor, new: &Tensor, offset: usize) -> Result<Tensor> {
    let width = cache.shape()[1];
    let seq = new.numel() / width;
    let row_bytes = 4 * width as u64;
    cache.gpu().copy(
        new.buf(),
        0,
        cache.buf(),
        offset as u64 * row_bytes,
        seq as u64 * row_bytes,
    );
    Ok(cache.prefix_view(&[1, offset + seq, width]))
}
