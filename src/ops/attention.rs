//! Causal grouped-query attention, built from batched matmuls and three small
//! kernels (head split/merge with repeat_kv, and a causal scaled softmax),
//! each with its backward rule.

use super::matmul::Transpose;
use super::{groups, groups_for_elements, launch};
use crate::autograd::record;
use crate::error::{shape_err, Result};
use crate::shaders::Kernel;
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    seq: u32,
    src_heads: u32,
    head_dim: u32,
    group: u32,
    keys: u32,
    offset: u32,
    scale: f32,
    /// Sliding window: keys a query sees, itself included (0: all earlier ones).
    window: u32,
}

fn heads_params(
    batch: usize,
    seq: usize,
    src_heads: usize,
    head_dim: usize,
    group: usize,
) -> Params {
    Params {
        batch: batch as u32,
        seq: seq as u32,
        src_heads: src_heads as u32,
        head_dim: head_dim as u32,
        group: group as u32,
        keys: 0,
        offset: 0,
        scale: 1.0,
        window: 0,
    }
}

fn split_raw(x: &Tensor, p: Params) -> Result<Tensor> {
    let heads = (p.src_heads * p.group) as usize;
    let shape = [p.batch as usize, heads, p.seq as usize, p.head_dim as usize];
    let out = Tensor::empty(x.gpu(), &shape, DType::F32)?;
    launch(
        Kernel::SplitHeads,
        &p,
        &[x, &out],
        groups_for_elements(out.numel()),
    )?;
    Ok(out)
}

fn merge_raw(x: &Tensor, p: Params) -> Result<Tensor> {
    let shape = [
        p.batch as usize,
        p.seq as usize,
        (p.src_heads * p.head_dim) as usize,
    ];
    let out = Tensor::empty(x.gpu(), &shape, DType::F32)?;
    launch(
        Kernel::MergeHeads,
        &p,
        &[x, &out],
        groups_for_elements(out.numel()),
    )?;
    Ok(out)
}

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
    let out = split_raw(x, p)?;
    Ok(record(out, "split_heads", &[x], move |g, _| {
        Ok(vec![Some(merge_raw(g, p)?)])
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
    let out = merge_raw(x, p)?;
    Ok(record(out, "merge_heads", &[x], move |g, _| {
        Ok(vec![Some(split_raw(g, p)?)])
    }))
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
    let p = Params {
        batch: rows as u32,
        seq: queries as u32,
        keys: keys as u32,
        offset: offset as u32,
        scale,
        window: window.map_or(0, |w| w.clamp(1, u32::MAX as usize) as u32),
        ..heads_params(0, 0, 0, 0, 1)
    };
    let y = Tensor::empty(scores.gpu(), s, DType::F32)?;
    launch(Kernel::CausalSoftmax, &p, &[scores, &y], groups(rows))?;
    let saved = y.clone();
    Ok(record(y, "causal_softmax", &[scores], move |g, _| {
        // Masked entries have y = 0, so the plain softmax backward already zeroes them.
        let dx = super::softmax::softmax_backward_raw(&saved, g)?;
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
