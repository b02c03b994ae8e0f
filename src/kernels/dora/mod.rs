//! DoRA's own kernels: the recomposition W' = (m / ‖W + s·B·A‖) ⊙ (W + s·B·A)
//! (dora.wgsl), the row norms from the factored terms (dora_norm.wgsl), and
//! the fused layer's backward preparation (dora_backward.wgsl).

use super::params::{kernel_params, Params};
use super::reduce::{col_chunks, sum_cols};
use super::{groups, groups_for_elements, launch, rows_cols, shared};
use super::{Access, Family, Kernel, ParamsLayout};
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;
use Access::{Read, ReadWrite};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dora {
    /// The merged weight and its row norms; `dtype` is W's storage type.
    Recompose { dtype: DType },
    /// ‖W_i + s·B_i·A‖ from A·Wᵀ, the Gram matrix A·Aᵀ and ‖W_i‖².
    FactoredNorm,
    /// The fused DoRA layer's backward: g ⊙ m/‖V‖ and the column sums behind dL/dm.
    DoraBackwardPrep,
}

kernel_params! {
    pub(crate) struct RecomposeParams {
        rows: u32,
        cols: u32,
        rank: u32,
        scale: f32,
    }
}

kernel_params! {
    pub(crate) struct FactoredNormParams {
        rows: u32,
        rank: u32,
        scale: f32,
        _pad: u32,
    }
}

kernel_params! {
    pub(crate) struct BackwardParams {
        rows: u32,
        cols: u32,
        has_bias: u32,
        _pad: u32,
    }
}

impl Family for Dora {
    fn entry(&self) -> &'static str {
        match self {
            Dora::Recompose { .. } => "recompose",
            Dora::FactoredNorm => "factored_norm",
            Dora::DoraBackwardPrep => "dora_backward_prep",
        }
    }
    fn bindings(&self) -> &'static [(u32, Access)] {
        match self {
            Dora::Recompose { .. } | Dora::DoraBackwardPrep => &[
                (1, Read),
                (2, Read),
                (3, Read),
                (4, Read),
                (5, ReadWrite),
                (6, ReadWrite),
            ],
            Dora::FactoredNorm => &[(1, Read), (2, Read), (3, Read), (4, Read), (5, ReadWrite)],
        }
    }
    fn params(&self) -> ParamsLayout {
        match self {
            Dora::Recompose { .. } => RecomposeParams::layout(),
            Dora::FactoredNorm => FactoredNormParams::layout(),
            Dora::DoraBackwardPrep => BackwardParams::layout(),
        }
    }
    fn header(&self) -> String {
        match *self {
            Dora::Recompose { dtype } => shared::weight_loader("WWord", "load_w", "w", dtype),
            _ => String::new(),
        }
    }
    fn body(&self) -> &'static str {
        match self {
            Dora::Recompose { .. } => include_str!("dora.wgsl"),
            Dora::FactoredNorm => include_str!("dora_norm.wgsl"),
            Dora::DoraBackwardPrep => include_str!("dora_backward.wgsl"),
        }
    }
    fn reduces_rows(&self) -> bool {
        matches!(self, Dora::Recompose { .. })
    }
}

pub(super) fn variants() -> Vec<Kernel> {
    super::shared::weight_dtypes()
        .map(|dtype| Dora::Recompose { dtype })
        .chain([Dora::FactoredNorm, Dora::DoraBackwardPrep])
        .map(Kernel::from)
        .collect()
}

/// The merged f32 weight [out, in] and the row norms ‖W + s·B·A‖ [out] of a
/// DoRA layer: `w` [out, in] (any float dtype), `a` [r, in], `b` [out, r],
/// `m` [out], `scale` = lora_alpha / r. Shapes are the caller's to check.
pub(crate) fn recompose(
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    m: &Tensor,
    scale: f32,
) -> Result<(Tensor, Tensor)> {
    let [out_f, in_f] = [w.shape()[0], w.shape()[1]];
    let merged = Tensor::empty(w.gpu(), &[out_f, in_f], DType::F32)?;
    let norms = Tensor::empty(w.gpu(), &[out_f], DType::F32)?;
    let params = RecomposeParams {
        rows: out_f as u32,
        cols: in_f as u32,
        rank: a.shape()[0] as u32,
        scale,
    };
    launch(
        Dora::Recompose { dtype: w.dtype() },
        &params,
        &[w, a, b, m, &merged, &norms],
        groups(out_f),
    )?;
    Ok((merged, norms))
}

/// ‖W_i + s·B_i·A‖ per output row from `aw` = A·Wᵀ [r, out], `b` [out, r],
/// `gram` = A·Aᵀ [r, r] and `w_sq` = ‖W_i‖² [out].
pub(crate) fn factored_norm(
    aw: &Tensor,
    b: &Tensor,
    gram: &Tensor,
    w_sq: &Tensor,
    scale: f32,
) -> Result<Tensor> {
    let [out_f, r] = [b.shape()[0], b.shape()[1]];
    let norms = Tensor::empty(b.gpu(), &[out_f], DType::F32)?;
    let params = FactoredNormParams {
        rows: out_f as u32,
        rank: r as u32,
        scale,
        _pad: 0,
    };
    launch(
        Dora::FactoredNorm,
        &params,
        &[aw, b, gram, w_sq, &norms],
        groups_for_elements(out_f),
    )?;
    Ok(norms)
}

/// h = g ⊙ c and gy = Σ_rows g ⊙ (y − bias) in one pass over the output
/// gradient `g`; dL/dm = gy / m.
pub(crate) fn backward_prep(
    g: &Tensor,
    y: &Tensor,
    c: &Tensor,
    bias: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let (rows, cols) = rows_cols(g);
    let chunks = col_chunks(rows);
    let h = Tensor::empty(g.gpu(), g.shape(), DType::F32)?;
    let gy = Tensor::empty(g.gpu(), &[chunks, cols], DType::F32)?;
    let params = BackwardParams {
        rows: rows as u32,
        cols: cols as u32,
        has_bias: bias.is_some() as u32,
        _pad: 0,
    };
    launch(
        Dora::DoraBackwardPrep,
        &params,
        &[g, y, c, bias.unwrap_or(c), &h, &gy],
        [cols.div_ceil(64) as u32, chunks as u32, 1],
    )?;
    let gy = if chunks == 1 {
        gy.view(&[cols])
    } else {
        sum_cols(&gy, 1.0)?
    };
    Ok((h, gy))
}
