//! The fused (flash-style) attention (flash_attention.wgsl): forward with
//! per-query log-sum-exp, and the backward passes that recompute the
//! probabilities block by block, so no [queries, keys] matrix is ever held.

use super::params::{kernel_params, Params};
use super::{groups, launch, Access, Family, Kernel, ParamsLayout};
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;
use Access::{Read, ReadWrite};

/// The passes of the fused attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionPass {
    /// The output and each query's log-sum-exp.
    Forward,
    /// Σ d_out ⊙ out per query: the softmax backward's row term.
    Delta,
    /// dL/dq, one workgroup per block of queries.
    BackwardQuery,
    /// dL/dk and dL/dv, one workgroup per block of keys (summing a key/value
    /// head's query heads), so no two workgroups write one value.
    BackwardKeys,
}

/// One pass of the fused attention, with tiles for heads of up to
/// `head_dim_max` and `key_rows` keys per dL/dk,dL/dv workgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlashAttention {
    pub pass: AttentionPass,
    pub head_dim_max: u32,
    pub key_rows: u32,
}

kernel_params! {
    pub(crate) struct FlashParams {
        batch: u32,
        seq: u32,
        keys: u32,
        heads: u32,
        kv_heads: u32,
        head_dim: u32,
        offset: u32,
        /// Keys a query sees, itself included (0: all earlier ones).
        window: u32,
        scale: f32,
    }
}

impl Family for FlashAttention {
    fn entry(&self) -> &'static str {
        match self.pass {
            AttentionPass::Forward => "attention_forward",
            AttentionPass::Delta => "attention_delta",
            AttentionPass::BackwardQuery => "attention_backward_query",
            AttentionPass::BackwardKeys => "attention_backward_keys",
        }
    }
    fn bindings(&self) -> &'static [(u32, Access)] {
        match self.pass {
            AttentionPass::Forward => &[
                (1, Read),
                (2, Read),
                (3, Read),
                (4, ReadWrite),
                (5, ReadWrite),
            ],
            AttentionPass::Delta => &[(4, ReadWrite), (6, Read), (7, ReadWrite)],
            AttentionPass::BackwardQuery => &[
                (1, Read),
                (2, Read),
                (3, Read),
                (5, ReadWrite),
                (6, Read),
                (7, ReadWrite),
                (8, ReadWrite),
            ],
            AttentionPass::BackwardKeys => &[
                (1, Read),
                (2, Read),
                (3, Read),
                (5, ReadWrite),
                (6, Read),
                (7, ReadWrite),
                (9, ReadWrite),
                (10, ReadWrite),
            ],
        }
    }
    fn params(&self) -> ParamsLayout {
        FlashParams::layout()
    }
    fn header(&self) -> String {
        format!(
            "const D_MAX: u32 = {}u;\nconst ROWS: u32 = {}u;\nconst KEY_ROWS: u32 = {}u;\n",
            self.head_dim_max,
            attention_query_rows(self.head_dim_max),
            self.key_rows
        )
    }
    fn body(&self) -> &'static str {
        include_str!("flash_attention.wgsl")
    }
}

/// Every variant the dispatcher can pick: tiles under WebGPU's 16 KiB of
/// workgroup memory and under the 32 KiB most adapters give.
pub(super) fn variants() -> Vec<Kernel> {
    let mut v = Vec::new();
    for head_dim_max in HEAD_DIM_CLASSES {
        let key_rows: std::collections::BTreeSet<u32> = [16 << 10, 32 << 10]
            .into_iter()
            .filter_map(|bytes| attention_tiles(head_dim_max, bytes))
            .map(|tiles| tiles.key_rows)
            .collect();
        for key_rows in key_rows {
            for pass in [
                AttentionPass::Forward,
                AttentionPass::BackwardQuery,
                AttentionPass::BackwardKeys,
            ] {
                v.push(
                    FlashAttention {
                        pass,
                        head_dim_max,
                        key_rows,
                    }
                    .into(),
                );
            }
        }
    }
    v.push(ATTENTION_DELTA.into());
    v
}

/// The head-dimension classes the tiles are sized for.
const HEAD_DIM_CLASSES: [u32; 3] = [64, 128, 256];

/// The fused attention's delta pass: it uses no tiles, so one variant serves all.
const ATTENTION_DELTA: FlashAttention = FlashAttention {
    pass: AttentionPass::Delta,
    head_dim_max: 64,
    key_rows: 8,
};

/// The fused kernels' tiles: the head-dimension class, queries per forward
/// and dL/dq workgroup, keys per dL/dk,dL/dv workgroup.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tiles {
    pub head_dim_max: u32,
    pub rows: u32,
    pub key_rows: u32,
}

/// The fused attention's tiles for heads of up to `head_dim_max` (64, 128
/// or 256) within `workgroup_bytes` of workgroup memory: queries per
/// forward and dL/dq workgroup (8, or 4 for heads past 128: three query
/// tiles and the scores stay under 16 KiB), and keys per dL/dk,dL/dv
/// workgroup (8 or 4: four key tiles and two of weights must fit). `None`
/// where even 4 keys do not fit (heads past 128 under a 16 KiB limit).
pub(crate) fn attention_tiles(head_dim_max: u32, workgroup_bytes: u32) -> Option<Tiles> {
    let rows = attention_query_rows(head_dim_max);
    let key_bytes = |key_rows: u32| 4 * (4 * key_rows * head_dim_max + 2 * key_rows * 64);
    let key_rows = [8, 4]
        .into_iter()
        .find(|&r| key_bytes(r) <= workgroup_bytes)?;
    Some(Tiles {
        head_dim_max,
        rows,
        key_rows,
    })
}

/// Queries per fused-attention forward and dL/dq workgroup (the source's `ROWS`).
fn attention_query_rows(head_dim_max: u32) -> u32 {
    if head_dim_max > 128 {
        4
    } else {
        8
    }
}

/// The smallest head-dimension class of the fused attention that holds
/// `head_dim`, or `None` past 256 (such models take the matmul path).
pub(crate) fn attention_head_dim_max(head_dim: usize) -> Option<u32> {
    HEAD_DIM_CLASSES
        .into_iter()
        .find(|&m| head_dim <= m as usize)
}

fn variant(pass: AttentionPass, tiles: Tiles) -> FlashAttention {
    FlashAttention {
        pass,
        head_dim_max: tiles.head_dim_max,
        key_rows: tiles.key_rows,
    }
}

/// Workgroups for a pass over `items` rows (queries or keys) in blocks of `rows`, per head.
fn pass_groups(p: &FlashParams, items: u32, rows: u32, heads: u32) -> [u32; 3] {
    groups((items.div_ceil(rows) * heads * p.batch) as usize)
}

/// q [B, T, H·d], k and v [B, S, Hkv·d] -> (out [B, T, H·d], the log-sum-exp
/// of each query's scores [B, H, T]).
pub(crate) fn forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: &FlashParams,
    tiles: Tiles,
) -> Result<(Tensor, Tensor)> {
    let gpu = q.gpu();
    let out = Tensor::empty(gpu, q.shape(), DType::F32)?;
    let lse = Tensor::empty(gpu, &stats_shape(p), DType::F32)?;
    launch(
        variant(AttentionPass::Forward, tiles),
        p,
        &[q, k, v, &out, &lse],
        pass_groups(p, p.seq, tiles.rows, p.heads),
    )?;
    Ok((out, lse))
}

fn stats_shape(p: &FlashParams) -> [usize; 3] {
    [p.batch as usize, p.heads as usize, p.seq as usize]
}

/// Σ g ⊙ out per query [B, H, T].
pub(crate) fn delta(out: &Tensor, g: &Tensor, p: &FlashParams) -> Result<Tensor> {
    let delta = Tensor::empty(g.gpu(), &stats_shape(p), DType::F32)?;
    launch(
        ATTENTION_DELTA,
        p,
        &[out, g, &delta],
        groups((p.batch * p.seq * p.heads).div_ceil(64) as usize),
    )?;
    Ok(delta)
}

/// The saved forward of one fused attention: inputs and log-sum-exp.
pub(crate) struct Saved<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub lse: &'a Tensor,
    /// [`delta`] of the incoming gradient.
    pub delta: &'a Tensor,
}

/// dL/dq for the incoming gradient `g`.
pub(crate) fn backward_query(
    s: &Saved,
    g: &Tensor,
    p: &FlashParams,
    tiles: Tiles,
) -> Result<Tensor> {
    let dq = Tensor::empty(g.gpu(), s.q.shape(), DType::F32)?;
    launch(
        variant(AttentionPass::BackwardQuery, tiles),
        p,
        &[s.q, s.k, s.v, s.lse, g, s.delta, &dq],
        pass_groups(p, p.seq, tiles.rows, p.heads),
    )?;
    Ok(dq)
}

/// (dL/dk, dL/dv) for the incoming gradient `g`.
pub(crate) fn backward_keys(
    s: &Saved,
    g: &Tensor,
    p: &FlashParams,
    tiles: Tiles,
) -> Result<(Tensor, Tensor)> {
    let dk = Tensor::empty(g.gpu(), s.k.shape(), DType::F32)?;
    let dv = Tensor::empty(g.gpu(), s.v.shape(), DType::F32)?;
    launch(
        variant(AttentionPass::BackwardKeys, tiles),
        p,
        &[s.q, s.k, s.v, s.lse, g, s.delta, &dk, &dv],
        pass_groups(p, p.keys, tiles.key_rows, p.kv_heads),
    )?;
    Ok((dk, dv))
}
