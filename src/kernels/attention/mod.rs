//! The matmul attention path's small kernels (attention.wgsl): head split
//! (with repeat_kv) and merge, and the causal scaled softmax.

use super::params::{kernel_params, Params};
use super::{groups, groups_for_elements, launch, Access, Family, Kernel, ParamsLayout};
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;
use Access::{Read, ReadWrite};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attention {
    SplitHeads,
    MergeHeads,
    CausalSoftmax,
}

kernel_params! {
    pub(crate) struct AttentionParams {
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
}

impl Family for Attention {
    fn entry(&self) -> &'static str {
        match self {
            Attention::SplitHeads => "split_heads",
            Attention::MergeHeads => "merge_heads",
            Attention::CausalSoftmax => "causal_softmax",
        }
    }
    fn bindings(&self) -> &'static [(u32, Access)] {
        &[(1, Read), (2, ReadWrite)]
    }
    fn params(&self) -> ParamsLayout {
        AttentionParams::layout()
    }
    fn body(&self) -> &'static str {
        include_str!("attention.wgsl")
    }
    fn reduces_rows(&self) -> bool {
        matches!(self, Attention::CausalSoftmax)
    }
}

pub(super) fn variants() -> Vec<Kernel> {
    [
        Attention::SplitHeads,
        Attention::MergeHeads,
        Attention::CausalSoftmax,
    ]
    .map(Kernel::from)
    .to_vec()
}

/// The parameters of a head split or merge (no scores).
pub(crate) fn heads_params(
    batch: usize,
    seq: usize,
    src_heads: usize,
    head_dim: usize,
    group: usize,
) -> AttentionParams {
    AttentionParams {
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

/// [B, T, heads · head_dim] -> [B, heads · group, T, head_dim], each head repeated `group` times.
pub(crate) fn split_heads(x: &Tensor, p: AttentionParams) -> Result<Tensor> {
    let heads = (p.src_heads * p.group) as usize;
    let shape = [p.batch as usize, heads, p.seq as usize, p.head_dim as usize];
    let out = Tensor::empty(x.gpu(), &shape, DType::F32)?;
    launch(
        Attention::SplitHeads,
        &p,
        &[x, &out],
        groups_for_elements(out.numel()),
    )?;
    Ok(out)
}

/// [B, heads, T, head_dim] -> [B, T, heads · head_dim], summing each group of
/// `group` repeated heads (the split's backward).
pub(crate) fn merge_heads(x: &Tensor, p: AttentionParams) -> Result<Tensor> {
    let shape = [
        p.batch as usize,
        p.seq as usize,
        (p.src_heads * p.head_dim) as usize,
    ];
    let out = Tensor::empty(x.gpu(), &shape, DType::F32)?;
    launch(
        Attention::MergeHeads,
        &p,
        &[x, &out],
        groups_for_elements(out.numel()),
    )?;
    Ok(out)
}

/// softmax(scale · scores) with causal masking over `p.batch` rows of keys.
pub(crate) fn causal_softmax(scores: &Tensor, p: AttentionParams) -> Result<Tensor> {
    let y = Tensor::empty(scores.gpu(), scores.shape(), DType::F32)?;
    launch(
        Attention::CausalSoftmax,
        &p,
        &[scores, &y],
        groups(p.batch as usize),
    )?;
    Ok(y)
}
