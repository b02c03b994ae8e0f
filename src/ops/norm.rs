//! Row L2 norms of an [rows, cols] weight (the paper's ||.||_c for a Hugging
//! Face [out, in] weight) and their backward rule.

use super::elementwise::binary_raw;
use super::{groups, launch};
use crate::autograd::record;
use crate::error::{shape_err, Result};
use crate::shaders::{BinaryOp, Broadcast, Kernel};
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
}

/// n_i = ||W_i||_2 for each row of a 2-D `w` (f32, bf16 or f16): [rows, cols] -> [rows].
pub fn row_norm(w: &Tensor) -> Result<Tensor> {
    let &[rows, cols] = w.shape() else {
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
    let out = Tensor::empty(w.gpu(), &[rows], DType::F32)?;
    let params = Params {
        rows: rows as u32,
        cols: cols as u32,
    };
    launch(
        Kernel::RowNorm { dtype: w.dtype() },
        &params,
        &[w, &out],
        groups(rows),
    )?;
    let (saved_w, saved_n) = (w.clone(), out.clone());
    Ok(record(out, "row_norm", &[w], move |g, _| {
        // dn_i/dW_ij = W_ij / n_i
        let per_row = binary_raw(g, &saved_n, BinaryOp::Div, Broadcast::None)?;
        let per_row = super::reshape(&per_row, &[rows, 1])?;
        Ok(vec![Some(binary_raw(
            &saved_w,
            &per_row,
            BinaryOp::Mul,
            Broadcast::PerRow,
        )?)])
    }))
}
