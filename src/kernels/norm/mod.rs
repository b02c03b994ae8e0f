//! Row L2 norms of a weight of any float dtype (norm.wgsl).

use super::params::{kernel_params, Params};
use super::{groups, launch, shared, Access, Family, Kernel, ParamsLayout};
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;
use Access::{Read, ReadWrite};

/// ‖W_i‖₂ per row; `dtype` is the weight's storage type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowNorm {
    pub dtype: DType,
}

kernel_params! {
    pub(crate) struct NormParams {
        rows: u32,
        cols: u32,
    }
}

impl Family for RowNorm {
    fn entry(&self) -> &'static str {
        "row_norm"
    }
    fn bindings(&self) -> &'static [(u32, Access)] {
        &[(1, Read), (2, ReadWrite)]
    }
    fn params(&self) -> ParamsLayout {
        NormParams::layout()
    }
    fn header(&self) -> String {
        shared::weight_loader("WWord", "load_w", "w", self.dtype)
    }
    fn body(&self) -> &'static str {
        include_str!("norm.wgsl")
    }
    fn reduces_rows(&self) -> bool {
        true
    }
}

pub(super) fn variants() -> Vec<Kernel> {
    shared::weight_dtypes()
        .map(|dtype| RowNorm { dtype }.into())
        .collect()
}

/// n_i = ‖W_i‖₂ for each row of a 2-D float `w`: [rows, cols] -> [rows].
pub(crate) fn row_norm(w: &Tensor) -> Result<Tensor> {
    let [rows, cols] = [w.shape()[0], w.shape()[1]];
    let out = Tensor::empty(w.gpu(), &[rows], DType::F32)?;
    let params = NormParams {
        rows: rows as u32,
        cols: cols as u32,
    };
    launch(
        RowNorm { dtype: w.dtype() },
        &params,
        &[w, &out],
        groups(rows),
    )?;
    Ok(out)
}
