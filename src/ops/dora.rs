//! The DoRA recomposition kernel: W' = (m / ||W + s·B·A||_row) ⊙ (W + s·B·A).
//! Used to merge an adapter into its base weight; not recorded on the tape.

use super::{groups, launch};
use crate::error::{shape_err, Result};
use crate::shaders::Kernel;
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    rank: u32,
    scale: f32,
}

/// Recomposes a DoRA layer's weight. `w` [out, in] (f32, bf16 or f16),
/// `a` [r, in], `b` [out, r], `m` [out] (f32), `scale` = lora_alpha / r.
/// Returns the merged f32 weight [out, in] and the row norms ||W + s·B·A|| [out]
/// (kept so that unmerging can restore W).
pub fn recompose(
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    m: &Tensor,
    scale: f32,
) -> Result<(Tensor, Tensor)> {
    let &[out_f, in_f] = w.shape() else {
        shape_err!(
            "recompose: weight must be 2-D [out, in], got {:?}",
            w.shape()
        );
    };
    let &[r, a_in] = a.shape() else {
        shape_err!("recompose: lora_A must be 2-D [r, in], got {:?}", a.shape());
    };
    if a_in != in_f {
        shape_err!(
            "recompose: lora_A is {:?} but the weight is {:?}: expected [{r}, {in_f}]",
            a.shape(),
            w.shape()
        );
    }
    if b.shape() != [out_f, r] {
        shape_err!(
            "recompose: lora_B is {:?}, expected [{out_f}, {r}]",
            b.shape()
        );
    }
    if m.shape() != [out_f] {
        shape_err!(
            "recompose: magnitude is {:?}, expected [{out_f}]",
            m.shape()
        );
    }
    for (t, what) in [(a, "lora_A"), (b, "lora_B"), (m, "magnitude")] {
        t.expect_f32("recompose", what)?;
    }
    if !w.dtype().is_float() {
        shape_err!(
            "recompose: weight must be a float tensor, got {}",
            w.dtype().name()
        );
    }
    let merged = Tensor::empty(w.gpu(), &[out_f, in_f], DType::F32)?;
    let norms = Tensor::empty(w.gpu(), &[out_f], DType::F32)?;
    let params = Params {
        rows: out_f as u32,
        cols: in_f as u32,
        rank: r as u32,
        scale,
    };
    launch(
        Kernel::Recompose { dtype: w.dtype() },
        &params,
        &[w, a, b, m, &merged, &norms],
        groups(out_f),
    )?;
    Ok((merged, norms))
}
