//! Shape-only ops: no data moves, the buffer is shared.

use crate::autograd::record;
use crate::error::{shape_err, Result};
use crate::tensor::{numel, Tensor};

/// The same elements viewed with another shape of equal size.
pub fn reshape(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if numel(shape) != x.numel() {
        shape_err!(
            "reshape: {:?} ({} elements) cannot become {shape:?}",
            x.shape(),
            x.numel()
        );
    }
    let out = Tensor::from_parts(x.gpu(), x.0.buffer.clone(), shape, x.dtype(), None);
    let original = x.shape().to_vec();
    Ok(record(out, "reshape", &[x], move |g, _| {
        Ok(vec![Some(reshape(g, &original)?)])
    }))
}
