//! Sums over rows, columns or everything, with their backward rules
//! (a broadcast of the incoming gradient back to the input's shape).

use super::elementwise::expand;
use super::{groups, launch, rows_cols};
use crate::autograd::record;
use crate::error::Result;
use crate::shaders::{Broadcast, Kernel};
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    alpha: f32,
    _pad: u32,
}

/// alpha * sum over the last dimension: [..., c] -> [...] (a 1-D input gives [1]).
pub(crate) fn sum_rows_raw(x: &Tensor, alpha: f32) -> Result<Tensor> {
    x.expect_f32("sum_rows", "input")?;
    let (rows, cols) = rows_cols(x);
    let shape = match x.shape() {
        [] | [_] => vec![1],
        s => s[..s.len() - 1].to_vec(),
    };
    let out = Tensor::empty(x.gpu(), &shape, DType::F32)?;
    let params = Params {
        rows: rows as u32,
        cols: cols as u32,
        alpha,
        _pad: 0,
    };
    launch(Kernel::SumRows, &params, &[x, &out], groups(rows))?;
    Ok(out)
}

/// Rows per chunk of a column sum: `COL_CHUNK_ROWS` in shaders/common.wgsl.
pub(crate) const COL_CHUNK_ROWS: usize = 32;

/// How many chunks of [`COL_CHUNK_ROWS`] a column sum over `rows` rows takes.
pub(crate) fn col_chunks(rows: usize) -> usize {
    rows.div_ceil(COL_CHUNK_ROWS).max(1)
}

/// alpha * sum over all leading dimensions: [..., c] -> [c]. Chunks of
/// [`COL_CHUNK_ROWS`] rows are summed in parallel into [chunks, c], which
/// is summed again until one row is left.
pub(crate) fn sum_cols_raw(x: &Tensor, alpha: f32) -> Result<Tensor> {
    x.expect_f32("sum_cols", "input")?;
    let (rows, cols) = rows_cols(x);
    let chunks = col_chunks(rows);
    let out = Tensor::empty(x.gpu(), &[chunks, cols], DType::F32)?;
    let params = Params {
        rows: rows as u32,
        cols: cols as u32,
        alpha: if chunks == 1 { alpha } else { 1.0 },
        _pad: 0,
    };
    launch(
        Kernel::SumCols,
        &params,
        &[x, &out],
        [cols.div_ceil(256) as u32, chunks as u32, 1],
    )?;
    if chunks == 1 {
        super::reshape(&out, &[cols])
    } else {
        sum_cols_raw(&out, alpha)
    }
}

/// Sum over the last dimension: [..., c] -> [...].
pub fn sum_rows(x: &Tensor) -> Result<Tensor> {
    let out = sum_rows_raw(x, 1.0)?;
    let shape = x.shape().to_vec();
    Ok(record(out, "sum_rows", &[x], move |g, _| {
        // g has one value per row; view it as [..., 1] and broadcast along each row.
        let per_row_shape = match shape.split_last() {
            Some((_, lead)) if !lead.is_empty() => [lead, &[1]].concat(),
            _ => vec![1],
        };
        let per_row = super::reshape(g, &per_row_shape)?;
        Ok(vec![Some(expand(&per_row, &shape, Broadcast::PerRow)?)])
    }))
}

/// Sum over every dimension but the last: [..., c] -> [c].
pub fn sum_cols(x: &Tensor) -> Result<Tensor> {
    let out = sum_cols_raw(x, 1.0)?;
    let shape = x.shape().to_vec();
    Ok(record(out, "sum_cols", &[x], move |g, _| {
        Ok(vec![Some(expand(g, &shape, Broadcast::Row)?)])
    }))
}

/// alpha * the sum of all elements, as a [1] tensor.
fn sum_all_scaled(x: &Tensor, alpha: f32, name: &'static str) -> Result<Tensor> {
    let flat = super::reshape(&x.detach(), &[1, x.numel()])?;
    let out = sum_rows_raw(&flat, alpha)?;
    let shape = x.shape().to_vec();
    Ok(record(out, name, &[x], move |g, _| {
        let g = super::elementwise::scale(g, alpha)?;
        Ok(vec![Some(expand(&g, &shape, Broadcast::PerRow)?)])
    }))
}

/// The sum of all elements, as a [1] tensor.
pub fn sum_all(x: &Tensor) -> Result<Tensor> {
    sum_all_scaled(x, 1.0, "sum_all")
}

/// The mean of all elements, as a [1] tensor.
pub fn mean_all(x: &Tensor) -> Result<Tensor> {
    sum_all_scaled(x, 1.0 / x.numel().max(1) as f32, "mean_all")
}

/// The global L2 norm of several tensors (e.g. all gradients, for clipping),
/// as a [1] tensor: one single-workgroup pass per tensor writes its sum of
/// squares into a slot, then one sum. No gradient is recorded.
pub fn global_norm(tensors: &[Tensor]) -> Result<Tensor> {
    let Some(first) = tensors.first() else {
        crate::error::arg_err!("global_norm: no tensors given");
    };
    let slots = Tensor::empty(first.gpu(), &[tensors.len()], DType::F32)?;
    for (i, t) in tensors.iter().enumerate() {
        t.expect_f32("global_norm", "input")?;
        let params = Params {
            rows: i as u32,
            cols: t.numel() as u32,
            alpha: 1.0,
            _pad: 0,
        };
        launch(Kernel::SumSquaresInto, &params, &[t, &slots], [1, 1, 1])?;
    }
    let total = sum_rows_raw(&super::reshape(&slots, &[1, tensors.len()])?, 1.0)?;
    super::elementwise::sqrt(&total)
}
