//! Softmax over the last dimension and its backward rule.

use crate::autograd::record;
use crate::error::Result;
use crate::kernels::softmax as kernels;
use crate::tensor::Tensor;

/// Softmax over the last dimension.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    x.expect_f32("softmax", "input")?;
    let y = kernels::softmax(x)?;
    let saved = y.clone();
    Ok(record(y, "softmax", &[x], move |g, _| {
        Ok(vec![Some(kernels::softmax_backward(&saved, g)?)])
    }))
}
