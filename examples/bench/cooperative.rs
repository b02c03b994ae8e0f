//! The matmul shapes on cooperative matrices (tensor cores), on a context
//! of their own, where the adapter offers them: the first product runs the
//! self-test against the f32 kernels, and the section says how it went.

use dora_wgpu::nn::Rng;
use dora_wgpu::ops::Transpose;
use dora_wgpu::{DType, Gpu, GpuOptions};
use serde_json::{json, Value};

use crate::{random, time_matmul};

pub fn cooperative_matmuls(
    shapes: &[(usize, usize, usize)],
    repeats: usize,
    rng: &mut Rng,
) -> dora_wgpu::Result<Value> {
    let gpu = Gpu::with_options(&GpuOptions {
        cooperative_matrix: true,
        ..Default::default()
    })?;
    if gpu.uses_cooperative_matrix().is_none() {
        println!("cooperative matrices: none usable on this adapter\n");
        return Ok(json!({"offered": false}));
    }
    let mut rows = Vec::new();
    for &(m, k, n) in shapes {
        // x·Wᵀ with a bf16 weight (the base model's products) and f32 A·B.
        for (layout, t, dtype) in [
            ("NT", Transpose::NT, DType::BF16),
            ("NN", Transpose::NN, DType::F32),
        ] {
            let (a, b) = (random(rng, m * k), random(rng, k * n));
            let (first, gflops) = time_matmul(&gpu, (m, k, n), t, dtype, &a, &b, repeats, 2)?;
            let used = gpu.uses_cooperative_matrix() == Some(true);
            println!(
                "{:>18} {layout:>6} {:>5} {:>10.1} {gflops:>9.2} cooperative {}",
                format!("{m}×{k}×{n}"),
                dtype.name(),
                first * 1e3,
                if used { "on" } else { "off (self-test failed)" }
            );
            rows.push(
                json!({"m": m, "k": k, "n": n, "layout": layout, "weight_dtype": dtype.name(),
                "first_call_ms": first * 1e3, "gflops": gflops, "cooperative": used}),
            );
        }
    }
    println!();
    Ok(
        json!({"offered": true, "self_test_passed": gpu.uses_cooperative_matrix() == Some(true),
        "matmul": rows}),
    )
}
