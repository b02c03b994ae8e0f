//! Softmax over the last dimension and its backward rule.

use super::{groups, launch, rows_cols};
use crate::autograd::record;
use crate::error::Result;
use crate::shaders::Kernel;
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
}

/// Softmax over the last dimension.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    x.expect_f32("softmax", "input")?;
    let (rows, cols) = rows_cols(x);
    let params = Params {
        rows: rows as u32,
        cols: cols as u32,
    };
    let y = Tensor::empty(x.gpu(), x.shape(), DType::F32)?;
    launch(Kernel::SoftmaxForward, &params, &[x, &y], groups(rows))?;
    let saved = y.clone();
    Ok(record(y, "softmax", &[x], move |g, _| {
        Ok(vec![Some(softmax_backward_raw(&saved, g)?)])
    }))
}

/// dx = y ⊙ (g − Σ g·y) over the last dimension, for softmax output y.
pub(crate) fn softmax_backward_raw(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    let (rows, cols) = rows_cols(y);
    let params = Params {
        rows: rows as u32,
        cols: cols as u32,
    };
    let dx = Tensor::empty(g.gpu(), g.shape(), DType::F32)?;
    launch(Kernel::SoftmaxBackward, &params, &[y, g, &dx], groups(rows))?;
    Ok(dx)
}
