//! Causal grouped-query attention, two ways: batched matmuls around three
//! small kernels (head split/merge with repeat_kv, and a causal scaled
//! softmax), each with its backward rule; or the fused flash-style kernels
//! (`flash_attention.wgsl`), which never hold a [queries, keys] matrix.

use super::matmul::Transpose;
use crate::autograd::record;
use crate::error::{shape_err, Result};
use crate::gpu::{AttentionKernels, Gpu};
use crate::kernels::attention::{self as kernels, heads_params, AttentionParams};
use crate::kernels::flash_attention::{
    self as flash, attention_head_dim_max, attention_tiles, FlashParams, Tiles,
};
use crate::tensor::Tensor;

/// [B, T, heads * head_dim] -> [B, heads * group, T, head_dim], each head repeated `group` times.
pub fn split_heads(x: &Tensor, heads: usize, head_dim: usize, group: usize) -> Result<Tensor> {
    x.expect_f32("split_heads", "input")?;
    let &[batch, seq, width] = x.shape() else {
        shape_err!(
            "split_heads: input must be [batch, seq, width], got {:?}",
            x.shape()
        );
    };
    if width != heads * head_dim || group == 0 {
        shape_err!("split_heads: width {width} is not {heads} heads × {head_dim}");
    }
    let p = heads_params(batch, seq, heads, head_dim, group);
    let out = kernels::split_heads(x, p)?;
    Ok(record(out, "split_heads", &[x], move |g, _| {
        Ok(vec![Some(kernels::merge_heads(g, p)?)])
    }))
}

/// [B, heads, T, head_dim] -> [B, T, heads * head_dim].
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    x.expect_f32("merge_heads", "input")?;
    let &[batch, heads, seq, head_dim] = x.shape() else {
        shape_err!(
            "merge_heads: input must be [batch, heads, seq, head_dim], got {:?}",
            x.shape()
        );
    };
    let p = heads_params(batch, seq, heads, head_dim, 1);
    let out = kernels::merge_heads(x, p)?;
    Ok(record(out, "merge_heads", &[x], move |g, _| {
        Ok(vec![Some(kernels::split_heads(g, p)?)])
    }))
}

/// A sliding window as the kernels take it: the keys a query sees, 0 for all.
fn window_param(window: Option<usize>) -> u32 {
    window.map_or(0, |w| w.clamp(1, u32::MAX as usize) as u32)
}

/// softmax(scale · scores) over the last dim with causal masking: scores is
/// [.., T, S]; query t sits at absolute position offset + t and sees keys
/// 0..=offset + t, or with a sliding `window` only the `window` latest of
/// them (transformers' mask: key s is seen when s > offset + t - window).
pub fn causal_softmax(
    scores: &Tensor,
    scale: f32,
    offset: usize,
    window: Option<usize>,
) -> Result<Tensor> {
    scores.expect_f32("causal_softmax", "scores")?;
    let s = scores.shape();
    if s.len() < 2 {
        shape_err!("causal_softmax: scores must be [.., queries, keys], got {s:?}");
    }
    let (queries, keys) = (s[s.len() - 2], s[s.len() - 1]);
    if offset + queries > keys {
        shape_err!(
            "causal_softmax: {queries} queries at offset {offset} need {} keys, got {keys}",
            offset + queries
        );
    }
    let rows = scores.numel() / keys.max(1);
    let p = AttentionParams {
        batch: rows as u32,
        seq: queries as u32,
        keys: keys as u32,
        offset: offset as u32,
        scale,
        window: window_param(window),
        ..heads_params(0, 0, 0, 0, 1)
    };
    let y = kernels::causal_softmax(scores, p)?;
    let saved = y.clone();
    Ok(record(y, "causal_softmax", &[scores], move |g, _| {
        // Masked entries have y = 0, so the plain softmax backward already zeroes them.
        let dx = crate::kernels::softmax::softmax_backward(&saved, g)?;
        Ok(vec![Some(super::elementwise::scale(&dx, scale)?)])
    }))
}

/// How attention heads are laid out and scored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionHeads {
    pub heads: usize,
    /// Key/value heads, each shared by heads / kv_heads query heads.
    pub kv_heads: usize,
    /// Scores are q·k × scale.
    pub scale: f32,
    /// Sliding window: the keys each query sees, itself included.
    pub window: Option<usize>,
}

impl AttentionHeads {
    /// Plain causal attention scaled by 1/√head_dim.
    pub fn causal(heads: usize, kv_heads: usize, head_dim: usize) -> AttentionHeads {
        AttentionHeads {
            heads,
            kv_heads,
            scale: 1.0 / (head_dim as f32).sqrt(),
            window: None,
        }
    }
}

/// Causal attention with grouped-query heads. q [B, T, heads * d],
/// k and v [B, S, kv_heads * d] (S = offset + T: a KV cache may hold earlier
/// positions); returns [B, T, heads * d]. Scores are scaled by `scale`
/// (1/√d for most models) and masked by `window` as in [`causal_softmax`].
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: AttentionHeads,
    offset: usize,
) -> Result<Tensor> {
    let AttentionHeads {
        heads,
        kv_heads,
        scale,
        window,
    } = heads;
    let (&[batch, seq, width], &[kb, keys, kv_width]) = (q.shape(), k.shape()) else {
        shape_err!(
            "attention: q {:?} and k {:?} must be 3-D",
            q.shape(),
            k.shape()
        );
    };
    if heads == 0
        || kv_heads == 0
        || !heads.is_multiple_of(kv_heads)
        || !width.is_multiple_of(heads)
    {
        shape_err!("attention: {heads} heads cannot share {kv_heads} key/value heads");
    }
    let d = width / heads;
    if kb != batch || kv_width != kv_heads * d || v.shape() != k.shape() {
        shape_err!(
            "attention: q {:?}, k {:?}, v {:?} do not fit {heads}/{kv_heads} heads of {d}",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    if offset + seq > keys {
        shape_err!(
            "attention: {seq} queries at offset {offset} need {} keys, got {keys}",
            offset + seq
        );
    }
    if let Some(tiles) = fused_tiles(q.gpu(), batch, heads, seq, keys, d) {
        let p = FlashParams {
            batch: batch as u32,
            seq: seq as u32,
            keys: keys as u32,
            heads: heads as u32,
            kv_heads: kv_heads as u32,
            head_dim: d as u32,
            offset: offset as u32,
            window: window_param(window),
            scale,
        };
        return fused_attention(q, k, v, p, tiles);
    }
    let group = heads / kv_heads;
    let qh = super::reshape(&split_heads(q, heads, d, 1)?, &[batch * heads, seq, d])?;
    let kh = super::reshape(
        &split_heads(k, kv_heads, d, group)?,
        &[batch * heads, keys, d],
    )?;
    let vh = super::reshape(
        &split_heads(v, kv_heads, d, group)?,
        &[batch * heads, keys, d],
    )?;
    let scores = super::matmul_ex(&qh, &kh, Transpose::NT)?;
    let probs = causal_softmax(&scores, scale, offset, window)?;
    let out = super::matmul(&probs, &vh)?;
    merge_heads(&super::reshape(&out, &[batch, heads, seq, d])?)
}

/// Score matrices (scores and probabilities, [B·H, T, S] each) above this
/// many bytes send `AttentionKernels::Auto` to the fused kernels.
const FUSED_ABOVE_BYTES: usize = 8 << 20;

/// The fused kernels' tiles (head-dimension class, queries and keys per
/// workgroup) when this call takes them: where chosen and where the head
/// dimension fits the adapter's workgroup memory.
fn fused_tiles(
    gpu: &Gpu,
    batch: usize,
    heads: usize,
    seq: usize,
    keys: usize,
    d: usize,
) -> Option<Tiles> {
    let fused = match gpu.attention_kernels() {
        AttentionKernels::Fused => true,
        AttentionKernels::Matmul => false,
        AttentionKernels::Auto => batch * heads * seq * keys * 4 > FUSED_ABOVE_BYTES,
    };
    let head_dim_max = attention_head_dim_max(d).filter(|_| fused)?;
    let workgroup_bytes = gpu.limits().max_compute_workgroup_storage_size;
    attention_tiles(head_dim_max, workgroup_bytes)
}

/// Whether [`causal_attention`] on `gpu` takes the fused kernels for
/// `batch` sequences of `seq` queries against `keys` keys in `heads` heads
/// of `head_dim` (for estimates of what a step holds).
pub fn attention_is_fused(
    gpu: &Gpu,
    batch: usize,
    heads: usize,
    seq: usize,
    keys: usize,
    head_dim: usize,
) -> bool {
    fused_tiles(gpu, batch, heads, seq, keys, head_dim).is_some()
}

/// The fused attention: q [B, T, H·d], k and v [B, S, Hkv·d] as they come out
/// of the projections (no head split copies), out [B, T, H·d]. Backward
/// recomputes the probabilities block by block from the saved per-query
/// log-sum-exp, so nothing of size T·S is ever held.
fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: FlashParams,
    tiles: Tiles,
) -> Result<Tensor> {
    let (out, lse) = flash::forward(q, k, v, &p, tiles)?;
    let saved = [q, k, v, &out].map(Tensor::detach);
    Ok(record(out, "attention", &[q, k, v], move |g, needs| {
        let [q, k, v, out] = &saved;
        let delta = flash::delta(out, g, &p)?;
        let s = flash::Saved {
            q,
            k,
            v,
            lse: &lse,
            delta: &delta,
        };
        let mut grads = vec![None, None, None];
        if needs[0] {
            grads[0] = Some(flash::backward_query(&s, g, &p, tiles)?);
        }
        if needs[1] || needs[2] {
            let (dk, dv) = flash::backward_keys(&s, g, &p, tiles)?;
            grads[1] = Some(dk);
            grads[2] = Some(dv);
        }
        Ok(grads)
    }))
}
