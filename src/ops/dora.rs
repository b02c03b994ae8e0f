//! The DoRA recomposition kernel: W' = (m / ||W + s·B·A||_row) ⊙ (W + s·B·A).
//! Used to merge an adapter into its base weight; not recorded on the tape.

use crate::error::{shape_err, Result};
use crate::kernels::dora::{self as kernels, backward_prep};
use crate::kernels::elementwise::{binary as binary_raw, dropout as dropout_raw};
use crate::kernels::{BinaryOp, Broadcast};
use crate::tensor::Tensor;

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
    kernels::recompose(w, a, b, m, scale)
}

/// ‖W_i + s·B_i·A‖ per output row from the factored terms, in one pass:
/// `aw` = A·Wᵀ [r, out], `gram` = A·Aᵀ [r, r], `w_sq` = ‖W_i‖² [out] (cached,
/// W is frozen). No gradient is recorded: PEFT treats the norm as a constant.
pub(crate) fn factored_norm(
    aw: &Tensor,
    b: &Tensor,
    gram: &Tensor,
    w_sq: &Tensor,
    scale: f32,
) -> Result<Tensor> {
    let &[out_f, r] = b.shape() else {
        shape_err!(
            "factored_norm: lora_B must be [out, r], got {:?}",
            b.shape()
        );
    };
    if aw.shape() != [r, out_f] || gram.shape() != [r, r] || w_sq.shape() != [out_f] {
        shape_err!(
            "factored_norm: A·Wᵀ {:?}, Gram {:?} and ‖W‖² {:?} do not fit lora_B {:?}",
            aw.shape(),
            gram.shape(),
            w_sq.shape(),
            b.shape()
        );
    }
    kernels::factored_norm(aw, b, gram, w_sq, scale)
}

/// The fused DoRA forward, with the row norm `norm` = ||W + s·B·A|| held constant:
///   y = (m / norm) ⊙ (x·Wᵀ + s·(x·Aᵀ)·Bᵀ) + bias
/// in three dispatches: x·Aᵀ, the rank-r product into the output, then the
/// base product accumulated on top with the column scale and bias in its
/// epilogue. The dense update s·B·A never exists. Backward follows the
/// closed forms (h = g ⊙ m/n): dB = s·hᵀ·(x·Aᵀ), dA = s·(h·B)ᵀ·x,
/// dx = h·W + s·(h·B)·A, and dm = Σ_t g ⊙ (y − bias) / m, which reuses the
/// output instead of keeping x·Wᵀ.
pub(crate) struct FusedDora<'a> {
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub lora_a: &'a Tensor,
    pub lora_b: &'a Tensor,
    pub magnitude: &'a Tensor,
    /// ||W + s·B·A|| per output row, treated as a constant.
    pub norm: &'a Tensor,
    pub scale: f32,
}

/// (x·Aᵀ, c ⊙ (x·Wᵀ + s·(x·Aᵀ)·Bᵀ) + bias) in three dispatches: the rank-r
/// products, then the base product accumulated on top with the column scale
/// and bias in its epilogue.
fn scaled_update(
    x: &Tensor,
    layer: &FusedDora,
    c: &Tensor,
    bias: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    use crate::kernels::matmul::{matmul_epilogue, matmul_raw, Epilogue, Transpose::NT};
    let xa = matmul_raw(x, layer.lora_a, NT, 1.0, 0.0, None)?;
    let y = matmul_raw(&xa, layer.lora_b, NT, layer.scale, 0.0, None)?;
    let epilogue = Epilogue { col_scale: c, bias };
    matmul_epilogue(x, layer.weight, NT, 1.0, 1.0, Some(&y), Some(epilogue))?;
    Ok((xa, y))
}

pub(crate) fn dora_linear_fused(x: &Tensor, layer: &FusedDora) -> Result<Tensor> {
    use crate::autograd::record;
    use crate::kernels::matmul::{matmul_raw, Transpose::*};

    let FusedDora {
        weight: w,
        bias,
        lora_a: a,
        lora_b: b,
        magnitude: m,
        norm,
        scale,
    } = *layer;
    let c = binary_raw(m, norm, BinaryOp::Div, Broadcast::None)?;
    let (xa, y) = scaled_update(x, layer, &c, bias)?;

    let saved = (
        x.clone(),
        w.clone(),
        bias.cloned(),
        a.clone(),
        b.clone(),
        m.clone(),
        y.clone(),
    );
    Ok(record(y, "dora_linear", &[x, a, b, m], move |g, needs| {
        let (x, w, bias, a, b, m, y) = saved;
        let flat = |t: &Tensor| super::reshape(t, &[t.numel() / t.last_dim(), t.last_dim()]);
        let (h, gy) = backward_prep(g, &y, &c, bias.as_ref())?;
        let hb = matmul_raw(&h, &b, NN, 1.0, 0.0, None)?;
        let dx = if needs[0] {
            let dx = matmul_raw(&h, &w, NN, 1.0, 0.0, None)?;
            matmul_raw(&hb, &a, NN, scale, 1.0, Some(&dx))?;
            Some(dx)
        } else {
            None
        };
        let da = if needs[1] {
            Some(matmul_raw(&flat(&hb)?, &flat(&x)?, TN, scale, 0.0, None)?)
        } else {
            None
        };
        let db = if needs[2] {
            Some(matmul_raw(&flat(&h)?, &flat(&xa)?, TN, scale, 0.0, None)?)
        } else {
            None
        };
        let dm = if needs[3] {
            Some(binary_raw(&gy, &m, BinaryOp::Div, Broadcast::None)?)
        } else {
            None
        };
        Ok(vec![dx, da, db, dm])
    }))
}

/// The fused DoRA forward with PEFT's dropout semantics (the base path sees
/// `x`, the adapter path and the (c − 1) correction the dropped `x_d`),
/// with c = m / norm held constant:
///   z = c ⊙ (x_d·Wᵀ + s·(x_d·Aᵀ)·Bᵀ),   y = z + (x − x_d)·Wᵀ + bias
/// (the same as x·Wᵀ + bias + (c − 1) ⊙ x_d·Wᵀ + c ⊙ s·(x_d·Aᵀ)·Bᵀ).
/// Backward keeps only `x`, `z` and x_d·Aᵀ: the mask is regenerated from the
/// seed. With h = g ⊙ c and M the scaled mask:
///   dB = s·hᵀ·(x_d·Aᵀ), dA = s·(h·B)ᵀ·x_d, dm = Σ_t g ⊙ z / m,
///   dx = g·W + M ⊙ ((h − g)·W + s·(h·B)·A).
pub(crate) fn dora_linear_fused_dropout(
    x: &Tensor,
    layer: &FusedDora,
    p: f32,
    seed: u32,
) -> Result<Tensor> {
    use crate::autograd::record;
    use crate::kernels::matmul::{matmul_raw, Transpose::*};

    let FusedDora {
        weight: w,
        bias,
        lora_a: a,
        lora_b: b,
        magnitude: m,
        norm,
        scale,
    } = *layer;
    let c = binary_raw(m, norm, BinaryOp::Div, Broadcast::None)?;
    let xd = dropout_raw(x, p, seed)?;
    let (xa, z) = scaled_update(&xd, layer, &c, None)?;
    let rest = binary_raw(x, &xd, BinaryOp::Sub, Broadcast::None)?;
    drop(xd);
    let y = crate::kernels::elementwise::copy(&z)?;
    matmul_raw(&rest, w, NT, 1.0, 1.0, Some(&y))?;
    drop(rest);
    let y = match bias {
        Some(bias) => binary_raw(&y, bias, BinaryOp::Add, Broadcast::Row)?,
        None => y,
    };

    let saved = (x.clone(), w.clone(), a.clone(), b.clone(), m.clone(), z, xa);
    Ok(record(
        y,
        "dora_linear_dropout",
        &[x, a, b, m],
        move |g, needs| {
            let (x, w, a, b, m, z, xa) = saved;
            let flat = |t: &Tensor| super::reshape(t, &[t.numel() / t.last_dim(), t.last_dim()]);
            let (h, gz) = backward_prep(g, &z, &c, None)?;
            let hb = matmul_raw(&h, &b, NN, 1.0, 0.0, None)?;
            let dx = if needs[0] {
                // The dropped path's input gradient, masked, plus the undropped base path's.
                let t = matmul_raw(
                    &binary_raw(&h, g, BinaryOp::Sub, Broadcast::None)?,
                    &w,
                    NN,
                    1.0,
                    0.0,
                    None,
                )?;
                matmul_raw(&hb, &a, NN, scale, 1.0, Some(&t))?;
                let dx = dropout_raw(&t, p, seed)?;
                matmul_raw(g, &w, NN, 1.0, 1.0, Some(&dx))?;
                Some(dx)
            } else {
                None
            };
            let da = if needs[1] {
                // The mask again, from its seed: x_d itself was not kept.
                let xd = dropout_raw(&x, p, seed)?;
                Some(matmul_raw(&flat(&hb)?, &flat(&xd)?, TN, scale, 0.0, None)?)
            } else {
                None
            };
            let db = if needs[2] {
                Some(matmul_raw(&flat(&h)?, &flat(&xa)?, TN, scale, 0.0, None)?)
            } else {
                None
            };
            let dm = if needs[3] {
                Some(binary_raw(&gz, &m, BinaryOp::Div, Broadcast::None)?)
            } else {
                None
            };
            Ok(vec![dx, da, db, dm])
        },
    ))
}
