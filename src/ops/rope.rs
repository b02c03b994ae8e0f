//! Rotary position embeddings (Hugging Face's rotate_half convention) and
//! their backward rule: the inverse rotation.

use super::{groups_for_elements, launch};
use crate::autograd::record;
use crate::error::{shape_err, Result};
use crate::gpu::Gpu;
use crate::shaders::Kernel;
use crate::tensor::{DType, Tensor};

/// cos and sin of position × inverse frequency, [positions, head_dim / 2],
/// computed as transformers does: inv_freq and the angles in f32, then cos
/// and sin of those f32 angles (here in f64, rounded once).
#[derive(Clone)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
    pub head_dim: usize,
    pub positions: usize,
}

impl RopeTables {
    pub fn new(gpu: &Gpu, theta: f32, head_dim: usize, positions: usize) -> Result<RopeTables> {
        if !head_dim.is_multiple_of(2) || head_dim == 0 {
            shape_err!("rope: head_dim must be even, got {head_dim}");
        }
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for pos in 0..positions {
            for f in &inv_freq {
                let angle = (pos as f32 * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok(RopeTables {
            cos: Tensor::from_f32(gpu, &cos, &[positions, half])?,
            sin: Tensor::from_f32(gpu, &sin, &[positions, half])?,
            head_dim,
            positions,
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    seq: u32,
    heads: u32,
    head_dim: u32,
    offset: u32,
    direction: f32,
}

fn rope_raw(x: &Tensor, p: Params, tables: &RopeTables) -> Result<Tensor> {
    let out = Tensor::empty(x.gpu(), x.shape(), DType::F32)?;
    let pairs = (p.batch * p.seq * p.heads * p.head_dim / 2) as usize;
    launch(
        Kernel::Rope,
        &p,
        &[x, &tables.cos, &tables.sin, &out],
        groups_for_elements(pairs),
    )?;
    Ok(out)
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
    let params = Params {
        batch: batch as u32,
        seq: seq as u32,
        heads: heads as u32,
        head_dim: tables.head_dim as u32,
        offset: offset as u32,
        direction: 1.0,
    };
    let out = rope_raw(x, params, tables)?;
    let (cos, sin) = (tables.cos.clone(), tables.sin.clone());
    let (head_dim, positions) = (tables.head_dim, tables.positions);
    Ok(record(out, "rope", &[x], move |g, _| {
        let tables = RopeTables {
            cos,
            sin,
            head_dim,
            positions,
        };
        Ok(vec![Some(rope_raw(
            g,
            Params {
                direction: -1.0,
                ..params
            },
            &tables,
        )?)])
    }))
}
