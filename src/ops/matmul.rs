//! Matrix products C = op(A)·op(B), batched, with either operand transposed,
//! and their backward rules. B may be a frozen 16-bit weight. The product
//! itself (plan, kernel choice, dispatch) is `kernels::matmul`'s.

use crate::autograd::record;
use crate::error::{arg_err, Result};
pub use crate::kernels::matmul::Transpose;
use crate::kernels::matmul::{matmul_epilogue, matmul_raw, Epilogue};
use crate::tensor::{DType, Tensor};

/// out = col_scale ⊙ (alpha·op(A)·op(B) + beta·out) + bias, outside autograd:
/// the fused DoRA forward's product. `out` is created when None (then `beta`
/// only matters if it is not 0: the new output's contents are undefined);
/// a bias needs a column scale.
#[allow(clippy::too_many_arguments)]
pub fn matmul_fused(
    a: &Tensor,
    b: &Tensor,
    t: Transpose,
    alpha: f32,
    beta: f32,
    out: Option<&Tensor>,
    col_scale: Option<&Tensor>,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let epilogue = match (col_scale, bias) {
        (Some(col_scale), bias) => Some(Epilogue { col_scale, bias }),
        (None, None) => None,
        (None, Some(_)) => arg_err!("matmul_fused: a bias needs a column scale"),
    };
    matmul_epilogue(a, b, t, alpha, beta, out, epilogue)
}

/// A·B.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_ex(a, b, Transpose::NN)
}

/// op(A)·op(B) for any [`Transpose`]. A is [.., M, K] (or [.., K, M] transposed)
/// and f32; B is 2-D (shared by every row of A) or batched like A, and may be a
/// frozen bf16/f16 weight.
pub fn matmul_ex(a: &Tensor, b: &Tensor, t: Transpose) -> Result<Tensor> {
    if b.dtype() != DType::F32 && b.requires_grad() {
        arg_err!("matmul: a trained B must be f32, got {}", b.dtype().name());
    }
    if b.dtype() != DType::F32 && a.requires_grad() && matches!(t, Transpose::TN | Transpose::TT) {
        arg_err!(
            "matmul {t:?}: the gradient of A needs an f32 B; use NN or NT with 16-bit weights"
        );
    }
    let out = matmul_raw(a, b, t, 1.0, 0.0, None)?;
    let (sa, sb) = (a.clone(), b.clone());
    Ok(record(out, "matmul", &[a, b], move |g, needs| {
        // Fold batch dims when B was shared, so both gradients are plain 2-D products.
        let (a2, g2) = if sb.shape().len() == 2 && sa.shape().len() > 2 {
            let k = sa.last_dim();
            (
                super::reshape(&sa, &[sa.numel() / k, k])?,
                super::reshape(g, &[g.numel() / g.last_dim(), g.last_dim()])?,
            )
        } else {
            (sa.clone(), g.clone())
        };
        use Transpose::*;
        let ga = if needs[0] {
            let ga = match t {
                NN => matmul_raw(&g2, &sb, NT, 1.0, 0.0, None)?,
                NT => matmul_raw(&g2, &sb, NN, 1.0, 0.0, None)?,
                TN => matmul_raw(&sb, &g2, NT, 1.0, 0.0, None)?,
                TT => matmul_raw(&sb, &g2, TT, 1.0, 0.0, None)?,
            };
            Some(super::reshape(&ga, sa.shape())?)
        } else {
            None
        };
        let gb = if needs[1] {
            Some(match t {
                NN => matmul_raw(&a2, &g2, TN, 1.0, 0.0, None)?,
                NT => matmul_raw(&g2, &a2, TN, 1.0, 0.0, None)?,
                TN => matmul_raw(&a2, &g2, NN, 1.0, 0.0, None)?,
                TT => matmul_raw(&g2, &a2, TT, 1.0, 0.0, None)?,
            })
        } else {
            None
        };
        Ok(vec![ga, gb])
    }))
}
