//! Token embedding lookup. Embedding tables are frozen here (adapters sit on
//! the linear projections), so the lookup records no backward rule.

use super::{groups_for_elements, launch};
use crate::error::{shape_err, Result};
use crate::shaders::Kernel;
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    tokens: u32,
    dim: u32,
    vocab: u32,
    _pad: u32,
}

/// Rows of `table` [vocab, dim] (any float dtype) for each id in `ids` (i32,
/// any shape): returns [..ids.shape, dim] in f32.
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let &[vocab, dim] = table.shape() else {
        shape_err!(
            "embedding: table must be [vocab, dim], got {:?}",
            table.shape()
        );
    };
    if ids.dtype() != DType::I32 {
        shape_err!("embedding: ids must be i32, got {}", ids.dtype().name());
    }
    if table.requires_grad() {
        shape_err!("embedding: trainable embedding tables are not supported");
    }
    let tokens = ids.numel();
    let shape: Vec<usize> = [ids.shape(), &[dim]].concat();
    let out = Tensor::empty(table.gpu(), &shape, DType::F32)?;
    let params = Params {
        tokens: tokens as u32,
        dim: dim as u32,
        vocab: vocab as u32,
        _pad: 0,
    };
    launch(
        Kernel::Embedding(table.dtype()),
        &params,
        &[table, ids, &out],
        groups_for_elements(tokens * dim),
    )?;
    Ok(out)
}
