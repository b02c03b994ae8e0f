//! The LoRA layer as one recorded op: y = x·Wᵀ + bias + s·(drop(x)·Aᵀ)·Bᵀ.
//! Composed of separate recorded ops, every intermediate (the base product,
//! the low-rank product, the dropped input) would stay on the tape until
//! backward; fused, only `x` and the rank-r x_d·Aᵀ do, and the dropout mask is
//! regenerated from its seed.

use crate::autograd::record;
use crate::error::Result;
use crate::kernels::elementwise::{binary as binary_raw, dropout as dropout_raw};
use crate::kernels::matmul::{matmul_raw, Transpose::*};
use crate::kernels::{BinaryOp, Broadcast};
use crate::tensor::Tensor;

/// The frozen base and trainable factors of a LoRA layer.
pub(crate) struct FusedLora<'a> {
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub lora_a: &'a Tensor,
    pub lora_b: &'a Tensor,
    pub scale: f32,
}

/// Forward and, recorded, its backward with g the output gradient and M the
/// scaled dropout mask (ones without dropout):
///   dB = s·gᵀ·(x_d·Aᵀ), dA = s·(g·B)ᵀ·x_d, dx = g·W + M ⊙ (s·(g·B)·A).
/// `dropout` is (p, seed), or None.
pub(crate) fn lora_linear_fused(
    x: &Tensor,
    layer: &FusedLora,
    dropout: Option<(f32, u32)>,
) -> Result<Tensor> {
    let FusedLora {
        weight: w,
        bias,
        lora_a: a,
        lora_b: b,
        scale,
    } = *layer;
    let drop = move |t: &Tensor| match dropout {
        Some((p, seed)) => dropout_raw(t, p, seed),
        None => Ok(t.clone()),
    };
    let xa = matmul_raw(&drop(x)?, a, NT, 1.0, 0.0, None)?;
    let y = matmul_raw(&xa, b, NT, scale, 0.0, None)?;
    matmul_raw(x, w, NT, 1.0, 1.0, Some(&y))?;
    let y = match bias {
        Some(bias) => binary_raw(&y, bias, BinaryOp::Add, Broadcast::Row)?,
        None => y,
    };
    let saved = (x.clone(), w.clone(), a.clone(), b.clone(), xa);
    Ok(record(y, "lora_linear", &[x, a, b], move |g, needs| {
        let (x, w, a, b, xa) = saved;
        let flat = |t: &Tensor| super::reshape(t, &[t.numel() / t.last_dim(), t.last_dim()]);
        let gb = matmul_raw(g, &b, NN, 1.0, 0.0, None)?;
        let dx = if needs[0] {
            let dx = drop(&matmul_raw(&gb, &a, NN, scale, 0.0, None)?)?;
            matmul_raw(g, &w, NN, 1.0, 1.0, Some(&dx))?;
            Some(dx)
        } else {
            None
        };
        let da = if needs[1] {
            Some(matmul_raw(
                &flat(&gb)?,
                &flat(&drop(&x)?)?,
                TN,
                scale,
                0.0,
                None,
            )?)
        } else {
            None
        };
        let db = if needs[2] {
            Some(matmul_raw(&flat(g)?, &flat(&xa)?, TN, scale, 0.0, None)?)
        } else {
            None
        };
        Ok(vec![dx, da, db])
    }))
}
