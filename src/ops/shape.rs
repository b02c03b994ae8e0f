//! Shape ops: views that share the buffer, and slices that copy.

use crate::autograd::record;
use crate::error::{shape_err, Result};
use crate::kernels::columns::{copy_cols, ColumnParams};
use crate::tensor::{numel, DType, Tensor};

/// The same elements viewed with another shape of equal size.
pub fn reshape(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if numel(shape) != x.numel() {
        shape_err!(
            "reshape: {:?} ({} elements) cannot become {shape:?}",
            x.shape(),
            x.numel()
        );
    }
    let out = Tensor::from_parts(x.gpu(), x.0.buffer.clone(), shape, x.dtype(), None);
    let original = x.shape().to_vec();
    Ok(record(out, "reshape", &[x], move |g, _| {
        Ok(vec![Some(reshape(g, &original)?)])
    }))
}

/// Rows `start..start + len` of `x` seen as [rows, last_dim] (f32 or i32), as a
/// new tensor of shape [len, ..rest]. Backward places the gradient back into
/// zeros at the same rows.
pub fn slice_rows(x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    let Some((&rows, rest)) = x.shape().split_first() else {
        shape_err!("slice_rows: needs at least one dimension");
    };
    if start + len > rows {
        shape_err!(
            "slice_rows: rows {start}..{} of a tensor with {rows} rows",
            start + len
        );
    }
    if !matches!(x.dtype(), DType::F32 | DType::I32) {
        shape_err!(
            "slice_rows: needs a 32-bit tensor, got {}",
            x.dtype().name()
        );
    }
    let row_bytes = 4 * rest.iter().product::<usize>() as u64;
    let shape: Vec<usize> = [&[len][..], rest].concat();
    let out = Tensor::empty(x.gpu(), &shape, x.dtype())?;
    x.gpu().copy(
        x.buf(),
        start as u64 * row_bytes,
        out.buf(),
        0,
        len as u64 * row_bytes,
    );
    let full = x.shape().to_vec();
    Ok(record(out, "slice_rows", &[x], move |g, _| {
        let dx = Tensor::zeros(g.gpu(), &full, DType::F32)?;
        g.gpu().copy(
            g.buf(),
            0,
            dx.buf(),
            start as u64 * row_bytes,
            len as u64 * row_bytes,
        );
        Ok(vec![Some(dx)])
    }))
}

/// Columns `start..start + len` of the last dimension of `x` (f32), as a new
/// tensor: how q, k and v come out of Phi-3's fused `qkv_proj`. Backward
/// places the gradient back into zeros at the same columns.
pub fn slice_cols(x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    x.expect_f32("slice_cols", "input")?;
    let Some((&cols, lead)) = x.shape().split_last() else {
        shape_err!("slice_cols: needs at least one dimension");
    };
    if start + len > cols || len == 0 {
        shape_err!(
            "slice_cols: columns {start}..{} of a tensor with {cols} columns",
            start + len
        );
    }
    let rows = numel(lead);
    let shape: Vec<usize> = [lead, &[len]].concat();
    let out = Tensor::empty(x.gpu(), &shape, DType::F32)?;
    let p = ColumnParams {
        rows: rows as u32,
        len: len as u32,
        src_cols: cols as u32,
        src_start: start as u32,
        dst_cols: len as u32,
        dst_start: 0,
    };
    copy_cols(x, &out, p)?;
    let full = x.shape().to_vec();
    Ok(record(out, "slice_cols", &[x], move |g, _| {
        let dx = Tensor::zeros(g.gpu(), &full, DType::F32)?;
        copy_cols(g, &dx, p.reversed())?;
        Ok(vec![Some(dx)])
    }))
}
