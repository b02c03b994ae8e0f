//! Tensor operations. Each file holds one op family: its forward (checks,
//! then the kernels of `crate::kernels`) and, beside it, its backward rule
//! (recorded on the tape by `autograd::record`). Ops check shapes and dtypes
//! and return errors; they never panic on user input.

mod attention;
pub(crate) mod dora;
mod elementwise;
mod embedding;
mod lora;
mod loss;
mod matmul;
mod norm;
mod reduce;
mod rmsnorm;
mod rope;
mod shape;
mod softmax;

/// The cooperative-matrix kernel's self-test, exposed for the tests (any kernel can be compared).
#[doc(hidden)]
pub use crate::kernels::matmul::self_test as matmul_self_test;
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
pub use matmul::{matmul, matmul_ex, matmul_fused, Transpose};
pub use norm::row_norm;
pub use reduce::{global_norm, mean_all, sum_all, sum_cols, sum_rows};
pub use rmsnorm::rms_norm;
pub use rope::{rope, RopeTables};
pub use shape::{reshape, slice_cols, slice_rows};
pub use softmax::softmax;

pub(crate) use crate::kernels::rows_cols;
