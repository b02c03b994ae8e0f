//! A band of columns copied between matrices (columns.wgsl): fused-projection
//! slices and the vocabulary blocks' logits.

use super::params::{kernel_params, Params};
use super::{groups_for_elements, launch, Access, Family, Kernel, ParamsLayout};
use crate::error::Result;
use crate::tensor::Tensor;
use Access::{Read, ReadWrite};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyCols;

kernel_params! {
    pub(crate) struct ColumnParams {
        rows: u32,
        len: u32,
        src_cols: u32,
        src_start: u32,
        dst_cols: u32,
        dst_start: u32,
    }
}

impl ColumnParams {
    /// The same band copied the other way (a slice's backward).
    pub(crate) fn reversed(self) -> ColumnParams {
        ColumnParams {
            src_cols: self.dst_cols,
            src_start: self.dst_start,
            dst_cols: self.src_cols,
            dst_start: self.src_start,
            ..self
        }
    }
}

impl Family for CopyCols {
    fn entry(&self) -> &'static str {
        "copy_cols"
    }
    fn bindings(&self) -> &'static [(u32, Access)] {
        &[(1, Read), (2, ReadWrite)]
    }
    fn params(&self) -> ParamsLayout {
        ColumnParams::layout()
    }
    fn body(&self) -> &'static str {
        include_str!("columns.wgsl")
    }
}

pub(super) fn variants() -> Vec<Kernel> {
    vec![CopyCols.into()]
}

/// dst[r, dst_start + c] = src[r, src_start + c] for c < len.
pub(crate) fn copy_cols(src: &Tensor, dst: &Tensor, p: ColumnParams) -> Result<()> {
    launch(
        CopyCols,
        &p,
        &[src, dst],
        groups_for_elements((p.rows * p.len) as usize),
    )
}
