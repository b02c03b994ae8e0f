//! RMSNorm with a frozen weight (f32, bf16 or f16) and its backward rule.

use crate::autograd::record;
use crate::error::{shape_err, Result};
use crate::kernels::{rmsnorm as kernels, rows_cols};
use crate::tensor::Tensor;

/// y = w ⊙ x / √(mean(x²) + eps) over the last dimension.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    x.expect_f32("rms_norm", "input")?;
    let (_, cols) = rows_cols(x);
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
    let y = kernels::rms_norm(x, weight, eps)?;
    let (sx, sw) = (x.clone(), weight.clone());
    Ok(record(y, "rms_norm", &[x], move |g, _| {
        Ok(vec![Some(kernels::rms_norm_backward(&sx, &sw, g, eps)?)])
    }))
}
