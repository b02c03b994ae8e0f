//! Softmax over the last dimension and its backward (softmax.wgsl).

use super::params::{kernel_params, Params};
use super::{groups, launch, rows_cols, Access, Family, Kernel, ParamsLayout};
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;
use Access::{Read, ReadWrite};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Softmax {
    SoftmaxForward,
    SoftmaxBackward,
}

kernel_params! {
    pub(crate) struct SoftmaxParams {
        rows: u32,
        cols: u32,
    }
}

impl Family for Softmax {
    fn entry(&self) -> &'static str {
        match self {
            Softmax::SoftmaxForward => "softmax_forward",
            Softmax::SoftmaxBackward => "softmax_backward",
        }
    }
    fn bindings(&self) -> &'static [(u32, Access)] {
        match self {
            Softmax::SoftmaxForward => &[(1, Read), (3, ReadWrite)],
            Softmax::SoftmaxBackward => &[(1, Read), (2, Read), (3, ReadWrite)],
        }
    }
    fn params(&self) -> ParamsLayout {
        SoftmaxParams::layout()
    }
    fn body(&self) -> &'static str {
        include_str!("softmax.wgsl")
    }
    fn reduces_rows(&self) -> bool {
        true
    }
}

pub(super) fn variants() -> Vec<Kernel> {
    [Softmax::SoftmaxForward, Softmax::SoftmaxBackward]
        .map(Kernel::from)
        .to_vec()
}

fn params(x: &Tensor) -> (usize, SoftmaxParams) {
    let (rows, cols) = rows_cols(x);
    let p = SoftmaxParams {
        rows: rows as u32,
        cols: cols as u32,
    };
    (rows, p)
}

/// Softmax of an f32 `x` over the last dimension.
pub(crate) fn softmax(x: &Tensor) -> Result<Tensor> {
    let (rows, p) = params(x);
    let y = Tensor::empty(x.gpu(), x.shape(), DType::F32)?;
    launch(Softmax::SoftmaxForward, &p, &[x, &y], groups(rows))?;
    Ok(y)
}

/// dx = y ⊙ (g − Σ g·y) over the last dimension, for softmax output y.
pub(crate) fn softmax_backward(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    let (rows, p) = params(y);
    let dx = Tensor::empty(g.gpu(), g.shape(), DType::F32)?;
    launch(Softmax::SoftmaxBackward, &p, &[y, g, &dx], groups(rows))?;
    Ok(dx)
}
