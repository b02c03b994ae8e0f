//! Rotary position embeddings (rope.wgsl): rotates pairs of each head's
//! first `rotary_dim` features by per-position angles from cos/sin tables.

use super::params::{kernel_params, Params};
use super::{groups_for_elements, launch, Access, Family, Kernel, ParamsLayout};
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;
use Access::{Read, ReadWrite};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rope;

kernel_params! {
    pub(crate) struct RopeParams {
        batch: u32,
        seq: u32,
        heads: u32,
        head_dim: u32,
        offset: u32,
        /// 1 rotates forward, −1 back (the backward pass).
        direction: f32,
        rotary_dim: u32,
    }
}

impl Family for Rope {
    fn entry(&self) -> &'static str {
        "rope"
    }
    fn bindings(&self) -> &'static [(u32, Access)] {
        &[(1, Read), (2, Read), (3, Read), (4, ReadWrite)]
    }
    fn params(&self) -> ParamsLayout {
        RopeParams::layout()
    }
    fn body(&self) -> &'static str {
        include_str!("rope.wgsl")
    }
}

pub(super) fn variants() -> Vec<Kernel> {
    vec![Rope.into()]
}

/// x [batch, seq, heads · head_dim] rotated by the tables' angles.
pub(crate) fn rope(x: &Tensor, p: RopeParams, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let out = Tensor::empty(x.gpu(), x.shape(), DType::F32)?;
    let pairs = (p.batch * p.seq * p.heads * (p.head_dim / 2)) as usize;
    launch(Rope, &p, &[x, cos, sin, &out], groups_for_elements(pairs))?;
    Ok(out)
}
