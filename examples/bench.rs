//! Benchmark: the device's FMA ceiling, matmul throughput against it, and one
//! DoRA layer against one LoRA layer (time and peak GPU memory).
//!
//!     cargo run --release --example bench -- [--json FILE] [--quick]
//!
//! Times are medians of repeated runs after a warm-up, taken around a
//! synchronising wait; the first call of each shape (pipeline creation
//! included) is reported apart.

use std::time::Instant;

use dora_wgpu::nn::{AdapterOptions, DoraLinear, DoraPath, Linear, LoraLinear, Rng};
use dora_wgpu::ops::{self, Transpose};
use dora_wgpu::{DType, Gpu, Tensor};
use serde_json::json;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// (first call, median steady state) in seconds.
fn time(
    gpu: &Gpu,
    repeats: usize,
    mut f: impl FnMut() -> dora_wgpu::Result<()>,
) -> dora_wgpu::Result<(f64, f64)> {
    let t = Instant::now();
    f()?;
    gpu.synchronize()?;
    let first = t.elapsed().as_secs_f64();
    let mut times = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        f()?;
        gpu.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok((first, median(times)))
}

fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.uniform_in(-1.0, 1.0)).collect()
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> dora_wgpu::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let repeats = if quick { 2 } else { 5 };
    let gpu = Gpu::new()?;
    let peak = dora_wgpu::bench::fma_peak_gflops(&gpu, repeats)?;
    println!(
        "adapter {}  backend {:?}",
        gpu.adapter_name(),
        gpu.backend()
    );
    println!("FMA peak {peak:.1} GFLOP/s\n");

    let shapes: &[(usize, usize, usize)] = if quick {
        &[(64, 64, 64), (16, 32, 8)]
    } else {
        &[
            (1024, 1024, 1024),
            (512, 576, 1536),
            (512, 1536, 576),
            (512, 576, 576),
            (512, 576, 8),
            (512, 8, 576),
            (512, 576, 49152),
        ]
    };
    let mut rng = Rng::new(1);
    let mut matmuls = Vec::new();
    println!(
        "{:>18} {:>6} {:>5} {:>10} {:>9} {:>8}",
        "m×k×n", "layout", "B", "first ms", "GFLOP/s", "% peak"
    );
    for &(m, k, n) in shapes {
        for (layout, t) in [
            ("NN", Transpose::NN),
            ("NT", Transpose::NT),
            ("TN", Transpose::TN),
        ] {
            for dtype in [DType::F32, DType::BF16] {
                if dtype != DType::F32 && t == Transpose::TN {
                    continue; // 16-bit weights are the B operand of NN/NT products
                }
                let a_shape = if t == Transpose::TN { [k, m] } else { [m, k] };
                let b_shape = if t == Transpose::NT { [n, k] } else { [k, n] };
                let a = Tensor::from_f32(&gpu, &random(&mut rng, m * k), &a_shape)?;
                let b = Tensor::from_f32_as(&gpu, &random(&mut rng, k * n), &b_shape, dtype)?;
                let (first, steady) =
                    time(&gpu, repeats, || ops::matmul_ex(&a, &b, t).map(|_| ()))?;
                let gflops = 2.0 * (m * k * n) as f64 / steady / 1e9;
                println!(
                    "{:>18} {layout:>6} {:>5} {:>10.1} {gflops:>9.2} {:>7.1}%",
                    format!("{m}×{k}×{n}"),
                    dtype.name(),
                    first * 1e3,
                    100.0 * gflops / peak
                );
                matmuls.push(json!({"m": m, "k": k, "n": n, "layout": layout, "weight_dtype": dtype.name(),
                    "first_call_ms": first * 1e3, "gflops": gflops, "pct_of_peak": 100.0 * gflops / peak}));
            }
        }
    }

    // One layer, forward + backward: DoRA (factored and direct) against LoRA.
    let (inp, out, rank, tokens) = if quick {
        (64, 96, 4, 32)
    } else {
        (576, 1536, 8, 512)
    };
    let w = Tensor::from_f32(&gpu, &random(&mut rng, out * inp), &[out, inp])?;
    let x = Tensor::from_f32(&gpu, &random(&mut rng, tokens * inp), &[tokens, inp])?;
    let options = AdapterOptions {
        rank,
        alpha: 2.0 * rank as f32,
        ..Default::default()
    };
    let step = |forward: &dyn Fn() -> dora_wgpu::Result<Tensor>| -> dora_wgpu::Result<(f64, u64)> {
        gpu.synchronize()?;
        gpu.reset_peak_memory();
        let base = gpu.memory_stats().live_bytes;
        let (_, t) = time(&gpu, repeats, || ops::sum_all(&forward()?)?.backward())?;
        Ok((t, gpu.memory_stats().peak_live_bytes - base))
    };
    let lora = LoraLinear::new(Linear::new(w.clone(), None)?, &options, 1)?;
    let (lora_t, lora_mem) = step(&|| lora.forward(&x))?;
    let mut dora = DoraLinear::new(Linear::new(w.clone(), None)?, &options, 1)?;
    let (dora_t, dora_mem) = step(&|| dora.forward(&x))?;
    dora.path = DoraPath::Direct;
    let (direct_t, _) = step(&|| dora.forward(&x))?;
    println!("\nlayer {inp}→{out}, r = {rank}, {tokens} tokens, forward + backward:");
    println!(
        "  LoRA {:.2} ms, {:.2} MiB peak",
        lora_t * 1e3,
        lora_mem as f64 / 1048576.0
    );
    println!(
        "  DoRA {:.2} ms, {:.2} MiB peak (factored)",
        dora_t * 1e3,
        dora_mem as f64 / 1048576.0
    );
    println!("  DoRA {:.2} ms (direct: materialised W')", direct_t * 1e3);
    println!(
        "  DoRA/LoRA time {:.3}, memory {:.3}; factored/direct time {:.3}",
        dora_t / lora_t,
        dora_mem as f64 / lora_mem as f64,
        dora_t / direct_t
    );

    let report = json!({
        "adapter": gpu.adapter_name(),
        "backend": format!("{:?}", gpu.backend()),
        "fma_peak_gflops": peak,
        "matmul": matmuls,
        "dora_lora_time_ratio": dora_t / lora_t,
        "dora_lora_memory_ratio": dora_mem as f64 / lora_mem as f64,
        "dora_factored_direct_time_ratio": dora_t / direct_t,
    });
    let finite = peak.is_finite()
        && matmuls
            .iter()
            .all(|m| m["gflops"].as_f64().is_some_and(f64::is_finite))
        && [dora_t / lora_t, dora_t / direct_t]
            .iter()
            .all(|r| r.is_finite() && *r > 0.0);
    if !finite {
        return Err(dora_wgpu::Error::Device(
            "a benchmark figure is not finite".into(),
        ));
    }
    if let Some(path) = json_path {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&report).expect("numbers serialize"),
        )
        .map_err(|source| dora_wgpu::Error::Io {
            path: path.clone(),
            source,
        })?;
        println!("\nwrote {path}");
    }
    Ok(())
}
