//! Sums over rows, columns or everything, with their backward rules
//! (a broadcast of the incoming gradient back to the input's shape).

use crate::autograd::record;
use crate::error::Result;
use crate::kernels::elementwise::expand;
use crate::kernels::reduce::{self as kernels, sum_cols as sum_cols_raw, sum_rows as sum_rows_raw};
use crate::kernels::Broadcast;
use crate::tensor::{DType, Tensor};

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
        let per_row = g.view(&per_row_shape);
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
        kernels::sum_squares_into(t, &slots, i)?;
    }
    let total = sum_rows_raw(&slots.view(&[1, tensors.len()]), 1.0)?;
    super::elementwise::sqrt(&total)
}
