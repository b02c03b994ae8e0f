//! A Llama-family decoder (Llama 2/3.x, SmolLM/SmolLM2, TinyLlama, Qwen2,
//! Qwen3, Mistral, Gemma 3 text) loaded from a Hugging Face directory, with
//! LoRA/DoRA adapters on its seven projections and a KV cache for generation.
//! The families differ in a few switches of [`ModelConfig`]: Qwen3 and
//! Gemma 3 normalise q and k per head, Gemma 3 scales norms by `1 + w`,
//! normalises each block's output, gates with GELU and mixes sliding-window
//! layers (with their own RoPE) among full ones.
//!
//! Frozen weights stay in their stored dtype (f32, bf16 or f16) on the GPU.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use super::dora::DoraLinear;
use super::linear::Linear;
use super::lora::{AdapterOptions, LoraLinear};
use crate::autograd::{checkpoint, no_grad};
use crate::error::{arg_err, shape_err, Error, Result};
use crate::gpu::Gpu;
use crate::io::hf::{Activation, MappedWeights, ModelConfig, RopeConfig};
use crate::io::{AdapterConfig, AdapterWeights, TensorRef};
use crate::ops::{self, AttentionHeads, RopeTables, VocabMatrix};
use crate::tensor::{DType, Tensor};

/// The seven adaptable projections of a Llama-layout decoder layer, with
/// their parent module.
pub const PROJECTIONS: [(&str, &str); 7] = [
    ("self_attn", "q_proj"),
    ("self_attn", "k_proj"),
    ("self_attn", "v_proj"),
    ("self_attn", "o_proj"),
    ("mlp", "gate_proj"),
    ("mlp", "up_proj"),
    ("mlp", "down_proj"),
];

/// Phi-3's four: q, k, v in one `qkv_proj`, gate and up in one `gate_up_proj`.
pub const FUSED_PROJECTIONS: [(&str, &str); 4] = [
    ("self_attn", "qkv_proj"),
    ("self_attn", "o_proj"),
    ("mlp", "gate_up_proj"),
    ("mlp", "down_proj"),
];

/// The projections of a model with this config, in the order
/// [`DecoderLayer::projections`] holds them.
pub fn projections(c: &ModelConfig) -> &'static [(&'static str, &'static str)] {
    if c.fused_projections {
        &FUSED_PROJECTIONS
    } else {
        &PROJECTIONS
    }
}

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
            Projection::Frozen(l) => ops::cast(&l.weight, l.weight.dtype().dense()),
            Projection::Lora(l) => l.merged_weight(),
            Projection::Dora(l) => Ok(l.merge()?.0),
        }
    }
}

/// One decoder layer's frozen norms and its projections. Norm weights are
/// held as the factor they multiply by (Gemma's `1 + w` already added).
#[derive(Clone, Debug)]
pub struct DecoderLayer {
    pub input_norm: Tensor,
    /// Llama: the norm before the MLP. Gemma: the norm of the attention
    /// output, before its residual add.
    pub post_attention_norm: Tensor,
    /// Gemma: the norms before and after the MLP.
    pub feedforward_norms: Option<(Tensor, Tensor)>,
    /// Qwen3, Gemma 3: RMSNorm over each head of q and of k ([head_dim]).
    pub qk_norms: Option<(Tensor, Tensor)>,
    /// q, k, v, o, gate, up, down in [`PROJECTIONS`] order, or Phi-3's
    /// [`FUSED_PROJECTIONS`].
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
    /// [vocab, hidden], in row blocks that fit the device's bindings.
    pub embed_tokens: VocabMatrix,
    pub layers: Vec<DecoderLayer>,
    pub final_norm: Tensor,
    /// None when the head is tied to the embedding.
    pub lm_head: Option<VocabMatrix>,
    /// Training keeps only each decoder layer's input and recomputes the
    /// layer during backward: less memory for long sequences, one more forward.
    pub grad_checkpoint: bool,
    rope: RopeTables,
    /// Gemma 3's sliding-window layers rotate with their own tables.
    sliding_rope: Option<RopeTables>,
    /// LongRoPE: the tables for forwards that end past this many positions.
    long_rope: Option<(usize, RopeTables)>,
}

/// What a decoder layer's forward needs besides the layer and its input.
#[derive(Clone)]
struct LayerContext {
    attention: AttentionHeads,
    head_dim: usize,
    /// Phi-3: qkv and gate_up come out of one projection each.
    fused: bool,
    eps: f32,
    activation: Activation,
    /// Position of the first token (earlier ones are in the KV cache).
    offset: usize,
    rope: RopeTables,
    dropout_seed: Option<u32>,
}

/// RMSNorm over each head_dim-wide head of x [B, T, heads * head_dim].
fn per_head_norm(x: &Tensor, weight: &Tensor, head_dim: usize, eps: f32) -> Result<Tensor> {
    let shape = x.shape().to_vec();
    let heads = ops::reshape(x, &[x.numel() / head_dim, head_dim])?;
    ops::reshape(&ops::rms_norm(&heads, weight, eps)?, &shape)
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
            let module = (li * layer.projections.len() + j) as u32;
            let module_seed = seed.wrapping_mul(0x9E37_79B9).wrapping_add(module);
            layer.projections[j].forward_train(x, module_seed)
        }
    };
    let (heads, offset, eps) = (ctx.attention, ctx.offset, ctx.eps);
    // Where o, gate and down sit among the projections.
    let (o, gate_up, down) = if ctx.fused { (1, 2, 3) } else { (3, 4, 6) };
    let h = ops::rms_norm(x, &layer.input_norm, eps)?;
    let (mut q, mut k, v) = if ctx.fused {
        let qkv = project(0, &h)?;
        let (qw, kvw) = (heads.heads * ctx.head_dim, heads.kv_heads * ctx.head_dim);
        (
            ops::slice_cols(&qkv, 0, qw)?,
            ops::slice_cols(&qkv, qw, kvw)?,
            ops::slice_cols(&qkv, qw + kvw, kvw)?,
        )
    } else {
        (project(0, &h)?, project(1, &h)?, project(2, &h)?)
    };
    if let Some((q_norm, k_norm)) = &layer.qk_norms {
        q = per_head_norm(&q, q_norm, ctx.head_dim, eps)?;
        k = per_head_norm(&k, k_norm, ctx.head_dim, eps)?;
    }
    let q = ops::rope(&q, heads.heads, offset, &ctx.rope)?;
    let k = ops::rope(&k, heads.kv_heads, offset, &ctx.rope)?;
    let attn = match kv {
        None => ops::causal_attention(&q, &k, &v, heads, 0)?,
        Some((kc, vc)) => {
            let (k_all, v_all) = (append(kc, &k, offset)?, append(vc, &v, offset)?);
            ops::causal_attention(&q, &k_all, &v_all, heads, offset)?
        }
    };
    let attn = project(o, &attn)?;
    let (x, h) = match &layer.feedforward_norms {
        None => {
            let x = ops::add(x, &attn)?;
            let h = ops::rms_norm(&x, &layer.post_attention_norm, eps)?;
            (x, h)
        }
        Some((pre, _)) => {
            let x = ops::add(x, &ops::rms_norm(&attn, &layer.post_attention_norm, eps)?)?;
            let h = ops::rms_norm(&x, pre, eps)?;
            (x, h)
        }
    };
    let (gate, up) = if ctx.fused {
        let both = project(gate_up, &h)?;
        let f = both.last_dim() / 2;
        (ops::slice_cols(&both, 0, f)?, ops::slice_cols(&both, f, f)?)
    } else {
        (project(gate_up, &h)?, project(gate_up + 1, &h)?)
    };
    let gate = match ctx.activation {
        Activation::Silu => ops::silu(&gate)?,
        Activation::GeluTanh => ops::gelu_tanh(&gate)?,
    };
    let mlp = project(down, &ops::mul(&gate, &up)?)?;
    match &layer.feedforward_norms {
        None => ops::add(&x, &mlp),
        Some((_, post)) => ops::add(&x, &ops::rms_norm(&mlp, post, eps)?),
    }
}

/// The module path of layer `i`'s projection `parent.name`, as transformers
/// and PEFT's keys name it (`model.layers.0.self_attn.q_proj`; a multimodal
/// Gemma 3's `model.language_model.layers.0.self_attn.q_proj`).
pub fn module_path(c: &ModelConfig, i: usize, parent: &str, name: &str) -> String {
    c.path(&format!("layers.{i}.{parent}.{name}"))
}

/// PEFT's `target_modules` for the projections `names` of `layers`, as a
/// regex over the decoder alone. PEFT matches a list of names anywhere in the
/// model (a multimodal Gemma 3's SigLIP has q_proj, k_proj and v_proj too)
/// and applies no `layers_to_transform` to a regex, so the regex states the
/// prefix, the layers and the projections.
pub fn decoder_targets_regex(c: &ModelConfig, names: &[&str], layers: Range<usize>) -> String {
    let mut parents: Vec<&str> = Vec::new();
    let mut wanted: Vec<&str> = Vec::new();
    for (parent, name) in projections(c) {
        if names.contains(name) {
            wanted.push(name);
            if !parents.contains(parent) {
                parents.push(parent);
            }
        }
    }
    let layers = if layers == (0..c.num_hidden_layers) {
        r"\d+".to_string()
    } else {
        let list: Vec<String> = layers.map(|i| i.to_string()).collect();
        format!("(?:{})", list.join("|"))
    };
    format!(
        r"{}layers\.{layers}\.(?:{})\.(?:{})",
        regex::escape(c.decoder_prefix),
        parents.join("|"),
        wanted.join("|")
    )
}

/// The names of one layer's norm weights (after `model.layers.{i}.`), in
/// the order [`DecoderLayer`] holds them: input, post-attention, then
/// Gemma's pre/post feed-forward pair, then the q/k pair.
fn norm_names(c: &ModelConfig) -> Vec<&'static str> {
    let mut names = vec!["input_layernorm", "post_attention_layernorm"];
    if c.gemma_norms {
        names.extend(["pre_feedforward_layernorm", "post_feedforward_layernorm"]);
    }
    if c.qk_norm {
        names.extend(["self_attn.q_norm", "self_attn.k_norm"]);
    }
    names
}

/// The length of a layer norm's weight: head_dim for the per-head q/k norms.
fn norm_len(c: &ModelConfig, name: &str) -> usize {
    if name.starts_with("self_attn.") {
        c.head_dim
    } else {
        c.hidden_size
    }
}

/// The `[out, in]` shapes of one decoder layer's projections, in [`projections`] order.
fn projection_shapes(c: &ModelConfig) -> Vec<[usize; 2]> {
    let (q, kv) = (
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
    );
    let (d, f) = (c.hidden_size, c.intermediate_size);
    if c.fused_projections {
        vec![[q + 2 * kv, d], [d, q], [2 * f, d], [d, f]]
    } else {
        vec![[q, d], [kv, d], [kv, d], [d, q], [f, d], [f, d], [d, f]]
    }
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
    let layers_prefix = c.path("layers.");
    let layers_held = held
        .keys()
        .filter_map(|k| {
            k.strip_prefix(&layers_prefix)?
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
            c.path("embed_tokens.weight"),
            vec![c.vocab_size, c.hidden_size],
        ),
        (c.path("norm.weight"), vec![c.hidden_size]),
    ];
    if !c.tie_word_embeddings {
        expected.push(("lm_head.weight".into(), vec![c.vocab_size, c.hidden_size]));
    }
    for i in 0..c.num_hidden_layers {
        let p = c.path(&format!("layers.{i}"));
        for norm in norm_names(c) {
            expected.push((format!("{p}.{norm}.weight"), vec![norm_len(c, norm)]));
        }
        for ((parent, name), shape) in projections(c).iter().zip(projection_shapes(c)) {
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
        let (config, w) = MappedWeights::open_with_config(dir)?;
        check_weights_fit(&config, dir, &w.shapes())?;
        let c = &config;
        let up = |t: TensorRef| t.to_gpu(gpu);
        // Gemma's norms multiply by 1 + w: hold that factor, in f32 as transformers computes it.
        let norm = |name: &str| {
            let t = take(&w, name, dir)?;
            if !c.gemma_norms {
                return up(t);
            }
            let host = crate::io::HostTensor {
                dtype: t.dtype,
                shape: t.shape.to_vec(),
                bytes: t.bytes.to_vec(),
            };
            let plus_one: Vec<f32> = host.to_f32().iter().map(|v| 1.0 + v).collect();
            Tensor::from_f32(gpu, &plus_one, t.shape)
        };
        let vocab = |t: TensorRef| VocabMatrix::upload(gpu, &t.bytes, t.shape, t.dtype);
        let embed_tokens = vocab(take(&w, &c.path("embed_tokens.weight"), dir)?)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = c.path(&format!("layers.{i}"));
            let mut layer_projections = Vec::with_capacity(7);
            for ((parent, name), [out_f, _]) in projections(c).iter().zip(projection_shapes(c)) {
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
                layer_projections.push(Projection::Frozen(Linear::new(weight, bias)?));
            }
            let mut norms = norm_names(c)
                .into_iter()
                .map(|n| norm(&format!("{p}.{n}.weight")))
                .collect::<Result<Vec<_>>>()?
                .into_iter();
            let (input_norm, post_attention_norm) = (norms.next().unwrap(), norms.next().unwrap());
            let mut pair = || Some((norms.next()?, norms.next()?));
            let feedforward_norms = if c.gemma_norms { pair() } else { None };
            let qk_norms = if c.qk_norm { pair() } else { None };
            layers.push(DecoderLayer {
                input_norm,
                post_attention_norm,
                feedforward_norms,
                qk_norms,
                projections: layer_projections,
            });
        }
        let final_norm = norm(&c.path("norm.weight"))?;
        // check_weights_fit required an untied head of the right shape.
        let lm_head = match c.tie_word_embeddings {
            false => Some(vocab(take(&w, "lm_head.weight", dir)?)?),
            true => None,
        };
        let positions = c.max_position_embeddings.clamp(1, 1 << 17);
        let tables = |r: &RopeConfig, inv_freq: &[f32]| {
            RopeTables::from_inv_freq(gpu, inv_freq, r.attention_scaling(), c.head_dim, positions)
        };
        let rope = tables(&c.rope, &c.rope.inv_freq(c.rotary_dim))?;
        let sliding_rope = match &c.sliding_rope {
            Some(r) => Some(tables(r, &r.inv_freq(c.rotary_dim))?),
            None => None,
        };
        let long_rope = match c.rope.long_inv_freq(c.rotary_dim) {
            Some((from, inv_freq)) => Some((from, tables(&c.rope, &inv_freq)?)),
            None => None,
        };
        Ok(Llama {
            config,
            embed_tokens,
            layers,
            final_norm,
            lm_head,
            grad_checkpoint: false,
            rope,
            sliding_rope,
            long_rope,
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
            for ((parent, name), p) in projections(&self.config).iter().zip(&layer.projections) {
                let b = p.base();
                out.insert(
                    module_path(&self.config, i, parent, name),
                    (b.out_features(), b.in_features()),
                );
            }
        }
        out
    }

    /// Puts a PEFT adapter's LoRA or DoRA layers on the modules it names.
    /// Fails, naming the tensor and both shapes, if it was made for another model.
    pub fn attach_adapter(&mut self, adapter: &AdapterWeights) -> Result<()> {
        let prefix = self.config.decoder_prefix;
        if prefix != crate::io::hf::CAUSAL_LM {
            if let Some(m) = adapter.modules.keys().find(|m| !m.starts_with(prefix)) {
                shape_err!(
                    "adapter module {m} is outside the language model ({prefix}…): adapters on the vision tower or the projector are not supported"
                );
            }
        }
        adapter.check_fits(&self.linear_shapes())?;
        let cfg = &adapter.config;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for ((parent, name), slot) in projections(&self.config)
                .iter()
                .zip(layer.projections.iter_mut())
            {
                let module = module_path(&self.config, i, parent, name);
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
        let names = projections(&self.config);
        for t in targets {
            if !names.iter().any(|(_, name)| name == t) {
                let known: Vec<&str> = names.iter().map(|(_, n)| *n).collect();
                shape_err!(
                    "unknown target module {t:?} for model_type {}; expected some of {}",
                    self.config.model_type,
                    known.join(" ")
                );
            }
        }
        for (i, layer) in self.layers.iter_mut().enumerate() {
            if !layers.contains(&i) {
                continue;
            }
            for (j, ((_, name), slot)) in names.iter().zip(layer.projections.iter_mut()).enumerate()
            {
                if !targets.is_empty() && !targets.contains(name) {
                    continue;
                }
                let base = slot.base().clone();
                let module_seed = seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add((i * names.len() + j) as u64);
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
            for ((parent, name), p) in projections(&self.config).iter().zip(&layer.projections) {
                let m = match p {
                    Projection::Frozen(_) => continue,
                    Projection::Lora(l) => l.to_adapter()?,
                    Projection::Dora(l) => l.to_adapter()?,
                };
                modules.insert(module_path(&self.config, i, parent, name), m);
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
            for ((parent, name), p) in projections(&self.config).iter().zip(&layer.projections) {
                let module = module_path(&self.config, i, parent, name);
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
        let full = LayerContext {
            attention: AttentionHeads {
                heads: c.num_attention_heads,
                kv_heads: c.num_key_value_heads,
                scale: c.attention_scale,
                window: None,
            },
            head_dim: c.head_dim,
            fused: c.fused_projections,
            eps: c.rms_norm_eps,
            activation: c.activation,
            offset,
            rope: match &self.long_rope {
                Some((from, long)) if offset + seq > *from => long.clone(),
                _ => self.rope.clone(),
            },
            dropout_seed,
        };
        let mut x = self.embed_tokens.embed(ids)?;
        if c.gemma_norms {
            x = ops::scale(&x, self.embedding_scale())?;
        }
        for (li, layer) in self.layers.iter().enumerate() {
            let ctx = match c.sliding_windows[li] {
                None => full.clone(),
                Some(window) => LayerContext {
                    attention: AttentionHeads {
                        window: Some(window),
                        ..full.attention
                    },
                    rope: self
                        .sliding_rope
                        .clone()
                        .unwrap_or_else(|| self.rope.clone()),
                    ..full.clone()
                },
            };
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

    /// Gemma's embedding scale √hidden_size, rounded to the embedding's
    /// dtype as transformers rounds it (`embed_scale.to(weight.dtype)`).
    fn embedding_scale(&self) -> f32 {
        let s = (self.config.hidden_size as f32).sqrt();
        match self.embed_tokens.dtype() {
            DType::BF16 => half::bf16::from_f32(s).to_f32(),
            DType::F16 => half::f16::from_f32(s).to_f32(),
            _ => s,
        }
    }

    /// The LM head: its own weight, or the tied embedding.
    pub fn head(&self) -> &VocabMatrix {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Logits [.., vocab] for hidden states [.., hidden], soft-capped where
    /// the config says so.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let logits = self.head().logits(hidden)?;
        match self.config.final_logit_softcapping {
            Some(cap) => ops::softcap(&logits, cap),
            None => Ok(logits),
        }
    }

    /// The training loss: mean cross-entropy of the (soft-capped) logits of
    /// hidden states [rows, hidden] against `targets`, chunked as
    /// [`ops::lm_head_cross_entropy`] does.
    pub fn loss(&self, hidden: &Tensor, targets: &[i32], chunk_rows: usize) -> Result<Tensor> {
        ops::lm_head_cross_entropy(
            hidden,
            self.head(),
            targets,
            chunk_rows,
            self.config.final_logit_softcapping,
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
        let mean = self.loss(hidden, targets, chunk_rows)?.item()?;
        Ok((mean as f64 * tokens as f64, tokens))
    }

    /// The projections' weights with adapters folded in (base dtype), by
    /// parameter name, for writing a merged model.
    pub fn merged_weights(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for ((parent, name), p) in projections(&self.config).iter().zip(&layer.projections) {
                if !matches!(p, Projection::Frozen(_)) {
                    out.insert(
                        format!("{}.weight", module_path(&self.config, i, parent, name)),
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
