//! Rows of an embedding table (of any float dtype) gathered by id
//! (embedding.wgsl), one block of a table's rows at a time.

use super::params::{kernel_params, Params};
use super::{groups_for_elements, launch, shared, Access, Family, Kernel, ParamsLayout};
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;
use Access::{Read, ReadWrite};

/// `DType`: the table's storage type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Embedding(pub DType);

kernel_params! {
    pub(crate) struct EmbeddingParams {
        tokens: u32,
        dim: u32,
        /// Rows of this block, starting at row `first` of a `total`-row table.
        vocab: u32,
        first: u32,
        total: u32,
    }
}

impl Family for Embedding {
    fn entry(&self) -> &'static str {
        "embedding"
    }
    fn bindings(&self) -> &'static [(u32, Access)] {
        &[(1, Read), (2, Read), (3, ReadWrite)]
    }
    fn params(&self) -> ParamsLayout {
        EmbeddingParams::layout()
    }
    fn header(&self) -> String {
        shared::weight_loader("WWord", "load_w", "w", self.0)
    }
    fn body(&self) -> &'static str {
        include_str!("embedding.wgsl")
    }
}

pub(super) fn variants() -> Vec<Kernel> {
    super::shared::weight_dtypes()
        .map(|d| Embedding(d).into())
        .collect()
}

/// Writes the rows of `block` (rows first.. of a `total`-row table) for the
/// ids that fall in it into `out`; ids outside the whole table give zeros.
pub(crate) fn embed_block(
    block: &Tensor,
    first: usize,
    total: usize,
    ids: &Tensor,
    out: &Tensor,
) -> Result<()> {
    let (vocab, dim) = (block.shape()[0], block.shape()[1]);
    let tokens = ids.numel();
    let params = EmbeddingParams {
        tokens: tokens as u32,
        dim: dim as u32,
        vocab: vocab as u32,
        first: first as u32,
        total: total as u32,
    };
    launch(
        Embedding(block.dtype()),
        &params,
        &[block, ids, out],
        groups_for_elements(tokens * dim),
    )
}
