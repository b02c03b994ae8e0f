//! Rotary position embeddings (Hugging Face's rotate_half convention) and
//! their backward rule: the inverse rotation.

use crate::autograd::record;
use crate::error::{shape_err, Result};
use crate::gpu::Gpu;
use crate::kernels::rope::{self as kernels, RopeParams};
use crate::tensor::Tensor;

/// cos and sin of position × inverse frequency, [positions, rotary_dim / 2],
/// computed as transformers does: inv_freq and the angles in f32, then cos
/// and sin of those f32 angles (here in f64, rounded once).
#[derive(Clone)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
    pub head_dim: usize,
    /// The leading dimensions of each head that rotate (head_dim unless partial).
    pub rotary_dim: usize,
    pub positions: usize,
}

impl RopeTables {
    /// The original RoPE: inverse frequencies theta^(-2i/head_dim).
    pub fn new(gpu: &Gpu, theta: f32, head_dim: usize, positions: usize) -> Result<RopeTables> {
        let inv_freq: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        RopeTables::from_inv_freq(gpu, &inv_freq, 1.0, head_dim, positions)
    }

    /// Tables for any inverse frequencies (one per rotated pair: scaled
    /// RoPE variants compute their own; fewer than head_dim / 2 rotate only
    /// the leading dimensions), with cos and sin multiplied by
    /// `attention_scaling` (YaRN's and LongRoPE's factor) as transformers does.
    pub fn from_inv_freq(
        gpu: &Gpu,
        inv_freq: &[f32],
        attention_scaling: f32,
        head_dim: usize,
        positions: usize,
    ) -> Result<RopeTables> {
        if !head_dim.is_multiple_of(2) || head_dim == 0 {
            shape_err!("rope: head_dim must be even, got {head_dim}");
        }
        let half = inv_freq.len();
        if half == 0 || half > head_dim / 2 {
            shape_err!(
                "rope: {half} frequencies for head_dim {head_dim} (1 to {} expected)",
                head_dim / 2
            );
        }
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for pos in 0..positions {
            for f in inv_freq {
                let angle = (pos as f32 * f) as f64;
                cos.push(angle.cos() as f32 * attention_scaling);
                sin.push(angle.sin() as f32 * attention_scaling);
            }
        }
        Ok(RopeTables {
            cos: Tensor::from_f32(gpu, &cos, &[positions, half])?,
            sin: Tensor::from_f32(gpu, &sin, &[positions, half])?,
            head_dim,
            rotary_dim: 2 * half,
            positions,
        })
    }
}

/// Rotates x [batch, seq, heads * head_dim] by the positions offset..offset + seq.
pub fn rope(x: &Tensor, heads: usize, offset: usize, tables: &RopeTables) -> Result<Tensor> {
    x.expect_f32("rope", "input")?;
    let &[batch, seq, width] = x.shape() else {
        shape_err!(
            "rope: input must be [batch, seq, heads * head_dim], got {:?}",
            x.shape()
        );
    };
    if width != heads * tables.head_dim {
        shape_err!(
            "rope: width {width} is not {heads} heads × {}",
            tables.head_dim
        );
    }
    if offset + seq > tables.positions {
        shape_err!(
            "rope: positions up to {} exceed the table's {}",
            offset + seq,
            tables.positions
        );
    }
    let params = RopeParams {
        batch: batch as u32,
        seq: seq as u32,
        heads: heads as u32,
        head_dim: tables.head_dim as u32,
        offset: offset as u32,
        direction: 1.0,
        rotary_dim: tables.rotary_dim as u32,
    };
    let out = kernels::rope(x, params, &tables.cos, &tables.sin)?;
    let tables = tables.clone();
    Ok(record(out, "rope", &[x], move |g, _| {
        let back = RopeParams {
            direction: -1.0,
            ..params
        };
        Ok(vec![Some(kernels::rope(
            g,
            back,
            &tables.cos,
            &tables.sin,
        )?)])
    }))
}
