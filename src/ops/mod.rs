//! Tensor operations. Each file holds one op family: the Rust launcher of its
//! WGSL kernel and, beside it, its backward rule (recorded on the tape by
//! `autograd::record`). Ops check shapes and dtypes and return errors; they
//! never panic on user input.

mod attention;
pub(crate) mod dora;
mod elementwise;
mod embedding;
mod lora;
mod loss;
mod matmul;
mod matmul_tune;
mod norm;
mod reduce;
mod rmsnorm;
mod rope;
mod shape;
mod softmax;

pub use attention::{
    attention_is_fused, causal_attention, causal_softmax, merge_heads, split_heads, AttentionHeads,
};
pub use dora::recompose;
pub(crate) use dora::{dora_linear_fused, dora_linear_fused_dropout, FusedDora};
pub use elementwise::{
    add, add_assign, cast, copy, div, dropout, exp, gelu_tanh, mul, scale, silu, softcap, sqrt,
    square, sub, to_f32, transpose,
};
pub use embedding::{embedding, VocabMatrix};
pub(crate) use lora::{lora_linear_fused, FusedLora};
pub use loss::{cross_entropy, lm_head_cross_entropy, IGNORE_INDEX};
pub(crate) use matmul::matmul_raw;
/// The cooperative-matrix kernel's self-test, exposed for the tests (any kernel can be compared).
#[doc(hidden)]
pub use matmul::self_test as matmul_self_test;
pub use matmul::{matmul, matmul_ex, matmul_fused, Transpose};
pub use norm::row_norm;
pub use reduce::{global_norm, mean_all, sum_all, sum_cols, sum_rows};
pub use rmsnorm::rms_norm;
pub use rope::{rope, RopeTables};
pub use shape::{reshape, slice_cols, slice_rows};
pub use softmax::softmax;

use crate::error::Result;
use crate::gpu::grid;
use crate::shaders::Kernel;
use crate::tensor::Tensor;

/// Records one dispatch of `kernel` over `tensors` (in its bindings' order).
pub(crate) fn launch<P: bytemuck::Pod>(
    kernel: Kernel,
    params: &P,
    tensors: &[&Tensor],
    workgroups: [u32; 3],
) -> Result<()> {
    let gpu = tensors[0].gpu();
    let buffers: Vec<_> = tensors.iter().map(|t| t.buf()).collect();
    gpu.dispatch(&kernel, bytemuck::bytes_of(params), &buffers, workgroups)
}

/// A grid of `n` workgroups (for one-workgroup-per-row kernels).
pub(crate) fn groups(n: usize) -> [u32; 3] {
    grid(n as u32)
}

/// A grid covering `n` elements at 256 per workgroup.
pub(crate) fn groups_for_elements(n: usize) -> [u32; 3] {
    grid(n.div_ceil(256) as u32)
}

/// Rows and columns of a tensor seen as a matrix over its last dimension.
pub(crate) fn rows_cols(t: &Tensor) -> (usize, usize) {
    let cols = t.last_dim();
    (t.numel() / cols.max(1), cols)
}
