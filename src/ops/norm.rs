//! Row L2 norms of an [rows, cols] weight (the paper's ||.||_c for a Hugging
//! Face [out, in] weight) and their backward rule.

use crate::autograd::record;
use crate::error::{shape_err, Result};
use crate::kernels::elementwise::binary as binary_raw;
use crate::kernels::{norm, BinaryOp, Broadcast};
use crate::tensor::Tensor;

/// n_i = ||W_i||_2 for each row of a 2-D `w` (f32, bf16 or f16): [rows, cols] -> [rows].
pub fn row_norm(w: &Tensor) -> Result<Tensor> {
    let &[rows, _] = w.shape() else {
        shape_err!(
            "row_norm: weight must be 2-D [out, in], got {:?}",
            w.shape()
        );
    };
    if !w.dtype().is_float() {
        shape_err!(
            "row_norm: weight must be a float tensor, got {}",
            w.dtype().name()
        );
    }
    let out = norm::row_norm(w)?;
    let (saved_w, saved_n) = (w.clone(), out.clone());
    Ok(record(out, "row_norm", &[w], move |g, _| {
        // dn_i/dW_ij = W_ij / n_i
        let per_row = binary_raw(g, &saved_n, BinaryOp::Div, Broadcast::None)?;
        let per_row = per_row.view(&[rows, 1]);
        Ok(vec![Some(binary_raw(
            &saved_w,
            &per_row,
            BinaryOp::Mul,
            Broadcast::PerRow,
        )?)])
    }))
}
