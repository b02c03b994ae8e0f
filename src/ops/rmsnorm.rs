//! RMSNorm with a frozen weight (f32, bf16 or f16) and its backward rule.

use super::{groups, launch, rows_cols};
use crate::autograd::record;
use crate::error::{shape_err, Result};
use crate::shaders::Kernel;
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

/// y = w ⊙ x / √(mean(x²) + eps) over the last dimension.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    x.expect_f32("rms_norm", "input")?;
    let (rows, cols) = rows_cols(x);
    if weight.shape() != [cols]
        || weight.dtype().dense() != weight.dtype()
        || !weight.dtype().is_float()
    {
        shape_err!(
            "rms_norm: weight is {:?} {}, expected [{cols}] f32, bf16 or f16",
            weight.shape(),
            weight.dtype().name()
        );
    }
    if weight.requires_grad() {
        shape_err!("rms_norm: the norm weight is frozen; pass a tensor that is not trainable");
    }
    let p = Params {
        rows: rows as u32,
        cols: cols as u32,
        eps,
        _pad: 0,
    };
    let y = Tensor::empty(x.gpu(), x.shape(), DType::F32)?;
    launch(
        Kernel::RmsNormForward(weight.dtype()),
        &p,
        &[x, weight, &y],
        groups(rows),
    )?;
    let (sx, sw) = (x.clone(), weight.clone());
    Ok(record(y, "rms_norm", &[x], move |g, _| {
        let dx = Tensor::empty(g.gpu(), g.shape(), DType::F32)?;
        launch(
            Kernel::RmsNormBackward(sw.dtype()),
            &p,
            &[&sx, &sw, g, &dx],
            groups(rows),
        )?;
        Ok(vec![Some(dx)])
    }))
}
