//! The device's arithmetic ceiling, the figure the benchmark measures other
//! kernels against.

use std::time::Instant;

use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::bench::fma_peak;
use crate::tensor::{DType, Tensor};

/// GFLOP/s of a plain FMA loop on this device: the ceiling other kernels are
/// measured against. Median of `repeats` timed runs after a warm-up.
pub fn fma_peak_gflops(gpu: &Gpu, repeats: usize) -> Result<f64> {
    // Long loops on fewer invocations: with short ones, per-invocation set-up
    // on software adapters hid a quarter of the ceiling (lavapipe: 31.6 GFLOP/s
    // at 512 iterations, 43 at 4096).
    let invocations = 256 * 256;
    let iters: u32 = 4096;
    let out = Tensor::empty(gpu, &[invocations], DType::F32)?;
    let run = || -> Result<f64> {
        let t = Instant::now();
        fma_peak(&out, iters)?;
        gpu.synchronize()?;
        Ok(t.elapsed().as_secs_f64())
    };
    run()?; // compile and warm up
    let times: Vec<f64> = (0..repeats.max(1)).map(|_| run()).collect::<Result<_>>()?;
    let flops = invocations as f64 * iters as f64 * 64.0;
    // A ceiling: the fastest run is the least disturbed one (on a shared
    // machine the median of a few runs swung from 22 to 43 GFLOP/s).
    let fastest = times.into_iter().fold(f64::INFINITY, f64::min);
    Ok(flops / fastest / 1e9)
}
