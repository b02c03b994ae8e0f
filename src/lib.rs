//! dora-wgpu: DoRA (weight-decomposed low-rank adaptation) fine-tuning on any
//! GPU through wgpu. WGSL kernels do the math, a small autograd tape runs the
//! backward passes, AdamW updates on the GPU.
//!
//! ```no_run
//! use dora_wgpu::{ops, Gpu, Tensor};
//! let gpu = Gpu::new()?;
//! let x = Tensor::from_f32(&gpu, &[1.0, 2.0, 3.0, 4.0], &[2, 2])?;
//! let w = Tensor::param(&gpu, &[0.5, -1.0, 0.25, 2.0], &[2, 2])?;
//! let loss = ops::mean_all(&ops::square(&ops::matmul(&x, &w)?)?)?;
//! loss.backward()?;
//! println!("loss {} grad {:?}", loss.item()?, w.grad().unwrap().to_vec_f32()?);
//! # Ok::<(), dora_wgpu::Error>(())
//! ```

pub mod assets;
pub mod autograd;
mod dtype;
mod error;
mod files;
pub mod gpu;
pub mod io;
pub mod kernels;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod peak;
pub mod plot;
/// The kernels' former module path, kept for applications that import it.
pub use kernels as shaders;
pub mod tasks;
mod tensor;
pub mod text;
pub mod train;

pub use autograd::{is_grad_enabled, no_grad, NoGradGuard};
pub use error::{describe_panic, Error, Result};
pub use gpu::{
    describe_adapters, list_adapters, AdapterReport, AttentionKernels, Gpu, GpuOptions, KernelTime,
    MatmulAutotune, MatmulKernels, MatmulTile, MatmulTileCache, MemoryStats, PoolLimits,
};
pub use tensor::{DType, Quant, Tensor};
/// Former module paths, kept for applications that import them.
pub use text::{data, tokenizer};
pub use text::{ChatMessage, Tokenizer};
/// The wgpu this crate is built on, for applications that share their device.
pub use wgpu;

/// README.md's code blocks, compiled by `cargo test --doc` so the library
/// snippet keeps up with the API (its other blocks are tagged `sh`/`text`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
