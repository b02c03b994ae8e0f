//! Sums over rows, over columns (in chunks of rows), and the sum of squares
//! of a whole tensor into one slot (reduce.wgsl).

use super::params::{kernel_params, Params};
use super::{groups, launch, rows_cols, Access, Family, Kernel, ParamsLayout};
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;
use Access::{Read, ReadWrite};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    SumRows,
    SumCols,
    SumSquaresInto,
}

kernel_params! {
    pub(crate) struct ReduceParams {
        rows: u32,
        cols: u32,
        alpha: f32,
        _pad: u32,
    }
}

impl Family for Reduce {
    fn entry(&self) -> &'static str {
        match self {
            Reduce::SumRows => "sum_rows",
            Reduce::SumCols => "sum_cols",
            Reduce::SumSquaresInto => "sum_squares_into",
        }
    }
    fn bindings(&self) -> &'static [(u32, Access)] {
        &[(1, Read), (2, ReadWrite)]
    }
    fn params(&self) -> ParamsLayout {
        ReduceParams::layout()
    }
    fn body(&self) -> &'static str {
        include_str!("reduce.wgsl")
    }
    fn reduces_rows(&self) -> bool {
        matches!(self, Reduce::SumRows | Reduce::SumSquaresInto)
    }
}

pub(super) fn variants() -> Vec<Kernel> {
    [Reduce::SumRows, Reduce::SumCols, Reduce::SumSquaresInto]
        .map(Kernel::from)
        .to_vec()
}

/// alpha * sum over the last dimension: [..., c] -> [...] (a 1-D input gives [1]).
pub(crate) fn sum_rows(x: &Tensor, alpha: f32) -> Result<Tensor> {
    x.expect_f32("sum_rows", "input")?;
    let (rows, cols) = rows_cols(x);
    let shape = match x.shape() {
        [] | [_] => vec![1],
        s => s[..s.len() - 1].to_vec(),
    };
    let out = Tensor::empty(x.gpu(), &shape, DType::F32)?;
    let params = ReduceParams {
        rows: rows as u32,
        cols: cols as u32,
        alpha,
        _pad: 0,
    };
    launch(Reduce::SumRows, &params, &[x, &out], groups(rows))?;
    Ok(out)
}

/// Rows per chunk of a column sum: `COL_CHUNK_ROWS` in shared/common.wgsl.
pub(crate) const COL_CHUNK_ROWS: usize = 32;

/// How many chunks of [`COL_CHUNK_ROWS`] a column sum over `rows` rows takes.
pub(crate) fn col_chunks(rows: usize) -> usize {
    rows.div_ceil(COL_CHUNK_ROWS).max(1)
}

/// alpha * sum over all leading dimensions: [..., c] -> [c]. Chunks of
/// [`COL_CHUNK_ROWS`] rows are summed in parallel into [chunks, c], which
/// is summed again until one row is left.
pub(crate) fn sum_cols(x: &Tensor, alpha: f32) -> Result<Tensor> {
    x.expect_f32("sum_cols", "input")?;
    let (rows, cols) = rows_cols(x);
    let chunks = col_chunks(rows);
    let out = Tensor::empty(x.gpu(), &[chunks, cols], DType::F32)?;
    let params = ReduceParams {
        rows: rows as u32,
        cols: cols as u32,
        alpha: if chunks == 1 { alpha } else { 1.0 },
        _pad: 0,
    };
    launch(
        Reduce::SumCols,
        &params,
        &[x, &out],
        [cols.div_ceil(256) as u32, chunks as u32, 1],
    )?;
    if chunks == 1 {
        Ok(out.view(&[cols]))
    } else {
        sum_cols(&out, alpha)
    }
}

/// slots[slot] = Σ t², in one workgroup.
pub(crate) fn sum_squares_into(t: &Tensor, slots: &Tensor, slot: usize) -> Result<()> {
    let params = ReduceParams {
        rows: slot as u32,
        cols: t.numel() as u32,
        alpha: 1.0,
        _pad: 0,
    };
    launch(Reduce::SumSquaresInto, &params, &[t, slots], [1, 1, 1])
}
