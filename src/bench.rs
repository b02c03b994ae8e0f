//! Measurement helpers for the benchmark: the device's FMA ceiling.

use std::time::Instant;

use crate::error::Result;
use crate::gpu::Gpu;
use crate::ops::{groups_for_elements, launch};
use crate::shaders::Kernel;
use crate::tensor::{DType, Tensor};

/// GFLOP/s of a plain FMA loop on this device: the ceiling other kernels are
/// measured against. Median of `repeats` timed runs after a warm-up.
pub fn fma_peak_gflops(gpu: &Gpu, repeats: usize) -> Result<f64> {
    let invocations = 256 * 1024;
    let iters: u32 = 512;
    let out = Tensor::empty(gpu, &[invocations], DType::F32)?;
    let run = || -> Result<f64> {
        let t = Instant::now();
        launch(
            Kernel::FmaPeak,
            &iters,
            &[&out],
            groups_for_elements(invocations),
        )?;
        gpu.synchronize()?;
        Ok(t.elapsed().as_secs_f64())
    };
    run()?; // compile and warm up
    let mut times: Vec<f64> = (0..repeats.max(1)).map(|_| run()).collect::<Result<_>>()?;
    times.sort_by(f64::total_cmp);
    let flops = invocations as f64 * iters as f64 * 64.0;
    Ok(flops / times[times.len() / 2] / 1e9)
}
