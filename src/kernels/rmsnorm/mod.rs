//! RMSNorm with a frozen weight of any dense float dtype, and its backward
//! (rmsnorm.wgsl).

use super::params::{kernel_params, Params};
use super::{groups, launch, rows_cols, shared, Access, Family, Kernel, ParamsLayout};
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;
use Access::{Read, ReadWrite};

/// `dtype`: the weight's storage type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RmsNorm {
    RmsNormForward(DType),
    RmsNormBackward(DType),
}

kernel_params! {
    pub(crate) struct RmsNormParams {
        rows: u32,
        cols: u32,
        eps: f32,
        _pad: u32,
    }
}

impl Family for RmsNorm {
    fn entry(&self) -> &'static str {
        match self {
            RmsNorm::RmsNormForward(_) => "rmsnorm_forward",
            RmsNorm::RmsNormBackward(_) => "rmsnorm_backward",
        }
    }
    fn bindings(&self) -> &'static [(u32, Access)] {
        match self {
            RmsNorm::RmsNormForward(_) => &[(1, Read), (2, Read), (4, ReadWrite)],
            RmsNorm::RmsNormBackward(_) => &[(1, Read), (2, Read), (3, Read), (4, ReadWrite)],
        }
    }
    fn params(&self) -> ParamsLayout {
        RmsNormParams::layout()
    }
    fn header(&self) -> String {
        let (RmsNorm::RmsNormForward(dtype) | RmsNorm::RmsNormBackward(dtype)) = *self;
        shared::weight_loader("WWord", "load_w", "w", dtype)
    }
    fn body(&self) -> &'static str {
        include_str!("rmsnorm.wgsl")
    }
    fn reduces_rows(&self) -> bool {
        true
    }
}

pub(super) fn variants() -> Vec<Kernel> {
    [DType::F32, DType::BF16, DType::F16]
        .into_iter()
        .flat_map(|d| [RmsNorm::RmsNormForward(d), RmsNorm::RmsNormBackward(d)])
        .map(Kernel::from)
        .collect()
}

fn params(x: &Tensor, eps: f32) -> (usize, RmsNormParams) {
    let (rows, cols) = rows_cols(x);
    let p = RmsNormParams {
        rows: rows as u32,
        cols: cols as u32,
        eps,
        _pad: 0,
    };
    (rows, p)
}

/// y = w ⊙ x / √(mean(x²) + eps) over the last dimension.
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    let (rows, p) = params(x, eps);
    let y = Tensor::empty(x.gpu(), x.shape(), DType::F32)?;
    launch(
        RmsNorm::RmsNormForward(weight.dtype()),
        &p,
        &[x, weight, &y],
        groups(rows),
    )?;
    Ok(y)
}

/// dL/dx of [`rms_norm`] for the incoming gradient `g`.
pub(crate) fn rms_norm_backward(
    x: &Tensor,
    weight: &Tensor,
    g: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    let (rows, p) = params(x, eps);
    let dx = Tensor::empty(g.gpu(), g.shape(), DType::F32)?;
    launch(
        RmsNorm::RmsNormBackward(weight.dtype()),
        &p,
        &[x, weight, g, &dx],
        groups(rows),
    )?;
    Ok(dx)
}
