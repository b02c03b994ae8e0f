//! Benchmark: the device's FMA ceiling, matmul throughput against it (and
//! the workgroup-tiled family's per tile), one
//! DoRA layer against one LoRA layer (time and peak GPU memory), end-to-end
//! DoRA and LoRA training steps, and merged-model against base-model forward.
//!
//!     cargo run --release --example bench -- [--json FILE] [--quick] [--profile]
//!         [--model DIR]... [--batch 4] [--seq 128] [--train-steps 3]
//!         [--memory-steps 300] [--model-memory-steps 50]
//!
//! Times are medians of repeated runs after a warm-up, taken around a
//! synchronising wait; the first call of each shape (pipeline creation
//! included) is reported apart. Training runs on the embedded default model
//! and, with --model, on that one too (e.g. SmolLM2-135M at batch 4 × 128).
//! The memory runs train the embedded model 300 steps of varying length
//! with dropout, and --model 50 steps with LoRA and with DoRA, reporting the
//! pool's peak against its peak by step 10 and against the peak live bytes.
//! --profile times every kernel of one DoRA training step, each dispatch
//! submitted alone and waited for: GPU timestamps where the adapter has
//! TIMESTAMP_QUERY, else wall-clock with the submission included.

use std::time::Instant;

mod cooperative;
mod measure;

use dora_wgpu::nn::{AdapterOptions, DoraLinear, DoraPath, Linear, LoraLinear, Rng};
use dora_wgpu::ops::{self, Transpose};
use dora_wgpu::train::Method;
use dora_wgpu::{AttentionKernels, DType, Gpu, GpuOptions, MatmulKernels, MatmulTile, Tensor};
use measure::{median, merged_forward_times, paired_ratio, train_throughputs, TrainShape};
use serde_json::json;

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

/// How `--profile` times a kernel on this adapter.
fn profile_clock(gpu: &Gpu) -> &'static str {
    if gpu.profiles_with_timestamps() {
        "GPU timestamps per dispatch (each submitted alone)"
    } else {
        "wall-clock per dispatch (each submitted alone and waited for)"
    }
}

fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.uniform_in(-1.0, 1.0)).collect()
}

/// Times op(A)·op(B) of `m×k×n` on `gpu`, A from the values `a` and B from
/// `b` stored as `dtype`: (first call in seconds, steady GFLOP/s). The
/// multi-GFLOP shapes get `repeats` of at most `big_repeats`: they take
/// seconds each on a CPU device.
#[allow(clippy::too_many_arguments)]
pub(crate) fn time_matmul(
    gpu: &Gpu,
    (m, k, n): (usize, usize, usize),
    t: Transpose,
    dtype: DType,
    a: &[f32],
    b: &[f32],
    repeats: usize,
    big_repeats: usize,
) -> dora_wgpu::Result<(f64, f64)> {
    let a_shape = if t == Transpose::TN { [k, m] } else { [m, k] };
    let b_shape = if t == Transpose::NT { [n, k] } else { [k, n] };
    let a = Tensor::from_f32(gpu, a, &a_shape)?;
    let b = Tensor::from_f32_as(gpu, b, &b_shape, dtype)?;
    let reps = if m * k * n > 1 << 30 {
        big_repeats
    } else {
        repeats
    };
    let (first, steady) = time(gpu, reps, || ops::matmul_ex(&a, &b, t).map(|_| ()))?;
    Ok((first, 2.0 * (m * k * n) as f64 / steady / 1e9))
}

/// The workgroup-tiled family (what real GPUs run) on its own contexts: each
/// tile forced, and the context's own choice (tuned per shape class on a
/// real GPU, the shape's default elsewhere), in GFLOP/s and % of the FMA
/// peak. Shapes: a square product (4096³ on a GPU), the base x·Wᵀ (bf16 W),
/// and the DoRA backward's rank-r products (dA = (h·B)ᵀ·x with M = r,
/// x·Aᵀ with N = r, dB = hᵀ·(x·Aᵀ) with N = r).
fn tiled_family(
    quick: bool,
    repeats: usize,
    peak: f64,
    rng: &mut Rng,
) -> dora_wgpu::Result<Vec<serde_json::Value>> {
    let open = |tile| {
        Gpu::with_options(&GpuOptions {
            matmul_kernels: MatmulKernels::Tiled,
            matmul_tile: tile,
            ..Default::default()
        })
    };
    let tuned = open(None)?;
    let mut contexts = vec![("auto".to_string(), tuned.clone())];
    for tile in MatmulTile::ALL {
        if tile.fits(tuned.limits()) {
            contexts.push((tile.name(), open(Some(tile))?));
        }
    }
    let mut shapes: Vec<(usize, usize, usize, Transpose, DType)> = if quick {
        vec![
            (96, 64, 80, Transpose::NN, DType::F32),
            (16, 64, 96, Transpose::TN, DType::F32),
            (96, 64, 16, Transpose::NT, DType::F32),
        ]
    } else {
        vec![
            (1024, 1024, 1024, Transpose::NN, DType::F32),
            (512, 576, 1536, Transpose::NT, DType::BF16),
            (16, 512, 576, Transpose::TN, DType::F32),
            (512, 576, 16, Transpose::NT, DType::F32),
            (1536, 512, 16, Transpose::TN, DType::F32),
        ]
    };
    if !quick {
        if tuned.adapter_info().device_type == dora_wgpu::wgpu::DeviceType::Cpu {
            println!("(4096³ left out on a CPU adapter: minutes per tile)");
        } else {
            shapes.insert(0, (4096, 4096, 4096, Transpose::NN, DType::F32));
            shapes.insert(1, (4096, 4096, 4096, Transpose::NT, DType::BF16));
        }
    }
    println!(
        "tiled family{}: GFLOP/s (% of peak) per tile",
        if tuned.tunes_matmul_tiles() {
            ", auto = tuned"
        } else {
            ", auto = the shape's default (no tuning here)"
        }
    );
    print!("{:>16} {:>6} {:>5}", "m×k×n", "layout", "B");
    for (name, _) in &contexts {
        print!(" {name:>16}");
    }
    println!();
    let mut rows = Vec::new();
    for (m, k, n, t, dtype) in shapes {
        let a = random(rng, m * k);
        let b = random(rng, k * n);
        print!(
            "{:>16} {:>6} {:>5}",
            format!("{m}×{k}×{n}"),
            format!("{t:?}"),
            dtype.name()
        );
        let mut per_tile = serde_json::Map::new();
        for (name, gpu) in &contexts {
            let (_, gflops) = time_matmul(gpu, (m, k, n), t, dtype, &a, &b, repeats, 3)?;
            print!(
                " {:>16}",
                format!("{gflops:.1} ({:.1}%)", 100.0 * gflops / peak)
            );
            per_tile.insert(
                name.clone(),
                json!({"gflops": gflops, "pct_of_peak": 100.0 * gflops / peak}),
            );
        }
        println!();
        rows.push(json!({"m": m, "k": k, "n": n, "layout": format!("{t:?}"),
            "weight_dtype": dtype.name(), "tiles": per_tile}));
    }
    println!();
    Ok(rows)
}

/// Causal attention forward + backward, the fused kernels against the
/// matmul path, each on its own context: time and peak GPU memory above what
/// the inputs hold. Shapes of SmolLM2-135M's attention (9 heads sharing 3
/// key/value heads of 64), at the README's 4 × 128 and at 512 tokens.
fn attention_paths(quick: bool, repeats: usize) -> dora_wgpu::Result<Vec<serde_json::Value>> {
    let shapes: &[(usize, usize, usize, usize, usize)] = if quick {
        &[(2, 32, 4, 2, 16)]
    } else {
        &[(4, 128, 9, 3, 64), (2, 512, 9, 3, 64)]
    };
    let contexts = [AttentionKernels::Fused, AttentionKernels::Matmul]
        .into_iter()
        .map(|attention| {
            Gpu::with_options(&GpuOptions {
                attention,
                ..Default::default()
            })
        })
        .collect::<dora_wgpu::Result<Vec<Gpu>>>()?;
    let mut rng = Rng::new(3);
    let mut rows = Vec::new();
    println!("\ncausal attention forward + backward (heads/kv heads × head dim):");
    for &(b, t, h, hkv, d) in shapes {
        let heads = ops::AttentionHeads::causal(h, hkv, d);
        let mut figures = Vec::new();
        for (gpu, kind) in contexts.iter().zip(["fused", "matmul"]) {
            let input = |rng: &mut Rng, n: usize| {
                Tensor::param(gpu, &random(rng, b * t * n * d), &[b, t, n * d])
            };
            let (q, k, v) = (
                input(&mut rng, h)?,
                input(&mut rng, hkv)?,
                input(&mut rng, hkv)?,
            );
            gpu.synchronize()?;
            gpu.reset_peak_memory();
            let base = gpu.memory_stats().live_bytes;
            let (_, steady) = time(gpu, repeats, || {
                ops::sum_all(&ops::causal_attention(&q, &k, &v, heads, 0)?)?.backward()
            })?;
            let peak = gpu.memory_stats().peak_live_bytes - base;
            figures.push((kind, steady, peak));
        }
        let [(_, fused_s, fused_mem), (_, matmul_s, matmul_mem)] = [figures[0], figures[1]];
        println!(
            "  {b} × {t}, {h}/{hkv} × {d}: fused {:.2} ms, {:.2} MiB; matmul {:.2} ms, {:.2} MiB; \
             fused/matmul time {:.3}, memory {:.3}",
            fused_s * 1e3,
            fused_mem as f64 / 1048576.0,
            matmul_s * 1e3,
            matmul_mem as f64 / 1048576.0,
            fused_s / matmul_s,
            fused_mem as f64 / matmul_mem as f64
        );
        rows.push(
            json!({"batch": b, "seq": t, "heads": h, "kv_heads": hkv, "head_dim": d,
            "fused_ms": fused_s * 1e3, "fused_peak_bytes": fused_mem,
            "matmul_ms": matmul_s * 1e3, "matmul_peak_bytes": matmul_mem,
            "fused_matmul_time_ratio": fused_s / matmul_s,
            "fused_matmul_memory_ratio": fused_mem as f64 / matmul_mem as f64}),
        );
    }
    Ok(rows)
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
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let number = |name: &str, default: usize| -> dora_wgpu::Result<usize> {
        value(name).map_or(Ok(default), |v| {
            v.parse().map_err(|_| {
                dora_wgpu::Error::InvalidArgument(format!("{name} {v:?} is not a number"))
            })
        })
    };
    // --model may be given more than once (e.g. a 135M and a 1B model).
    let user_models: Vec<std::path::PathBuf> = args
        .windows(2)
        .filter(|w| w[0] == "--model")
        .map(|w| w[1].clone().into())
        .collect();
    let profile = args.iter().any(|a| a == "--profile");
    let batch = number("--batch", 4)?;
    let seq = number("--seq", 128)?;
    let train_steps = number("--train-steps", if quick { 1 } else { 3 })?;
    let repeats = if quick { 2 } else { 5 };
    let gpu = Gpu::new()?;
    let peak = dora_wgpu::peak::fma_peak_gflops(&gpu, repeats)?;
    println!(
        "adapter {}  backend {:?}  matmul kernels {:?}  subgroup reductions {}",
        gpu.adapter_name(),
        gpu.backend(),
        gpu.matmul_kernels(),
        gpu.uses_subgroups()
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
                let (a, b) = (random(&mut rng, m * k), random(&mut rng, k * n));
                let (first, gflops) = time_matmul(&gpu, (m, k, n), t, dtype, &a, &b, repeats, 2)?;
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

    // The first shape again with the other matmul family, on a second context:
    // what the adapter-based choice gains.
    let other_kernels = if gpu.matmul_kernels() == MatmulKernels::Tiled {
        MatmulKernels::Broadcast
    } else {
        MatmulKernels::Tiled
    };
    let other = Gpu::with_options(&GpuOptions {
        matmul_kernels: other_kernels,
        ..Default::default()
    })?;
    let (m, k, n) = shapes[0];
    let a = Tensor::from_f32(&other, &random(&mut rng, m * k), &[m, k])?;
    let b = Tensor::from_f32(&other, &random(&mut rng, k * n), &[k, n])?;
    let (_, steady) = time(&other, 2, || ops::matmul(&a, &b).map(|_| ()))?;
    let other_gflops = 2.0 * (m * k * n) as f64 / steady / 1e9;
    println!(
        "{:>18} {:>6} {:>5} with {other_kernels:?} kernels: {other_gflops:.2} GFLOP/s ({:.1}%)\n",
        format!("{m}×{k}×{n}"),
        "NN",
        "f32",
        100.0 * other_gflops / peak
    );
    drop((a, b, other));
    // An experimental path: its failure is reported, not fatal to the run.
    let cooperative =
        cooperative::cooperative_matmuls(shapes, repeats, &mut rng).unwrap_or_else(|e| {
            println!("cooperative matrices: {e}\n");
            json!({"error": e.to_string()})
        });
    let tiled = tiled_family(quick, repeats, peak, &mut rng)?;

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

    let attention = attention_paths(quick, repeats)?;

    // End-to-end training steps: the embedded model, then --model if given.
    let default_dir = dora_wgpu::assets::default_model_dir()?;
    let mut models = vec![("default".to_string(), default_dir.clone())];
    for dir in &user_models {
        let name = dir
            .file_name()
            .map_or("model".into(), |n| n.to_string_lossy().to_string());
        models.push((name, dir.clone()));
    }
    let (tb, ts) = if quick { (2, 32) } else { (batch, seq) };
    println!("\ntraining steps (r 8, all seven projections), batch {tb} × {ts} tokens:");
    println!(
        "{:>16} {:>9} {:>9} {:>9} {:>10} {:>9} {:>7}",
        "model", "method", "step ms", "tokens/s", "peak MiB", "GFLOP/s", "% peak"
    );
    let mut train = Vec::new();
    let mut train_ratios = Vec::new();
    for (name, dir) in &models {
        // LoRA, DoRA, and DoRA recomputing each layer in backward
        // (`--grad-checkpoint`), their timed steps interleaved.
        let shape = |grad_checkpoint| TrainShape {
            batch: tb,
            seq: ts,
            warmup: 1,
            steps: train_steps,
            grad_checkpoint,
        };
        let runs = train_throughputs(
            dir,
            name,
            &[
                (Method::Lora, shape(false)),
                (Method::Dora, shape(false)),
                (Method::Dora, shape(true)),
            ],
        )?;
        for r in &runs {
            println!(
                "{:>16} {:>9} {:>9.1} {:>9.1} {:>10.1} {:>9.2} {:>6.1}%",
                r.model,
                if r.grad_checkpoint {
                    format!("{}+ckpt", r.method)
                } else {
                    r.method.clone()
                },
                r.step_s * 1e3,
                r.tokens_per_s,
                r.peak_gpu_bytes as f64 / 1048576.0,
                r.effective_gflops,
                100.0 * r.effective_gflops / peak
            );
            train.push(r.clone());
        }
        let ratios = |a: &measure::TrainBench, b: &measure::TrainBench| {
            (
                paired_ratio(&a.step_times_s, &b.step_times_s),
                a.peak_gpu_bytes as f64 / b.peak_gpu_bytes as f64,
            )
        };
        let (time_ratio, mem_ratio) = ratios(&runs[1], &runs[0]);
        let (ckpt_time, ckpt_mem) = ratios(&runs[2], &runs[1]);
        println!(
            "{name:>16} DoRA/LoRA step time {time_ratio:.3}, peak memory {mem_ratio:.3}; \
             checkpointed/plain DoRA time {ckpt_time:.3}, memory {ckpt_mem:.3}"
        );
        train_ratios.push(json!({"model": name, "dora_lora_time_ratio": time_ratio,
            "dora_lora_memory_ratio": mem_ratio, "checkpointed_plain_time_ratio": ckpt_time,
            "checkpointed_plain_memory_ratio": ckpt_mem}));
    }

    // Memory over a long run whose lengths vary: the pool must stay flat.
    let memory_steps = number("--memory-steps", if quick { 12 } else { 300 })?;
    let model_steps = number("--model-memory-steps", if quick { 3 } else { 50 })?;
    let mut memory_runs = Vec::new();
    println!("\nGPU memory over runs of varying length (MiB; growth = peak / peak by step 10):");
    println!(
        "{:>16} {:>6} {:>6} {:>11} {:>8} {:>9} {:>9} {:>9} {:>7} {:>10}",
        "model",
        "method",
        "steps",
        "batch×len",
        "dropout",
        "by st.10",
        "peak",
        "live",
        "growth",
        "alloc/live"
    );
    let mut memory_cases = vec![(
        models[0].clone(),
        Method::Dora,
        memory_steps,
        4,
        if quick { 64 } else { 256 },
        0.05,
    )];
    for model in models.iter().skip(1) {
        for method in [Method::Lora, Method::Dora] {
            memory_cases.push((model.clone(), method, model_steps, batch, seq, 0.0));
        }
    }
    for ((name, dir), method, steps, b, len, dropout) in memory_cases {
        let r = measure::memory_over_run(&dir, &name, method, steps, b, len, dropout)?;
        let mib = |x: u64| x as f64 / 1048576.0;
        println!(
            "{:>16} {:>6} {:>6} {:>11} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>7.3} {:>10.3}",
            r.model,
            r.method,
            r.steps,
            format!("{b}×{len}"),
            r.dropout,
            mib(r.peak_allocated_by_step_10),
            mib(r.peak_allocated),
            mib(r.peak_live),
            r.growth_ratio,
            r.allocated_live_ratio
        );
        memory_runs.push(r);
    }

    // Host memory while loading: the model through the memory map, against
    // reading every tensor into memory as `load_weights` (and merge) still do.
    let mut host_loads = Vec::new();
    for (name, dir) in &models {
        let mapped =
            measure::host_memory_while(&format!("{name}: Llama::load (mapped)"), dir, || {
                let model = dora_wgpu::nn::Llama::load(&gpu, dir)?;
                gpu.synchronize()?;
                Ok(model)
            })?;
        let read =
            measure::host_memory_while(&format!("{name}: load_weights (read)"), dir, || {
                dora_wgpu::io::hf::load_weights(dir)
            })?;
        // The loaded model and weights are dropped here; only the figures stay.
        let reports = [mapped.map(|(r, _)| r), read.map(|(r, _)| r)];
        for r in reports.into_iter().flatten() {
            println!(
                "host memory, {}: anonymous RSS +{:.1} MB at peak (largest tensor {:.1} MB, weight files {:.1} MB)",
                r.what,
                r.peak_anon_growth_bytes as f64 / 1e6,
                r.largest_tensor_bytes as f64 / 1e6,
                r.weight_file_bytes as f64 / 1e6
            );
            host_loads.push(r);
        }
    }

    // Merging DoRA into the weights: inference must cost what the base model costs.
    let fwd_model = user_models.first().unwrap_or(&default_dir).clone();
    let (fb, fs) = if quick { (1, 32) } else { (batch, seq) };
    let fwd = merged_forward_times(&gpu, &fwd_model, fb, fs, repeats)?;
    println!(
        "\nforward {fb} × {fs} on {}: base {:.1} ms, DoRA merged {:.1} ms ({:.3}×), unmerged {:.1} ms ({:.3}×)",
        fwd_model.display(),
        fwd.base_s * 1e3,
        fwd.merged_s * 1e3,
        fwd.merged_ratio,
        fwd.unmerged_s * 1e3,
        fwd.unmerged_ratio
    );

    let mut kernel_profile = Vec::new();
    if profile {
        let (pb, ps) = if quick { (2, 32) } else { (batch, seq) };
        let model = dora_wgpu::nn::Llama::load(&gpu, &fwd_model)?;
        let examples =
            dora_wgpu::text::data::random_examples(model.config.vocab_size, pb * 2, ps, 3);
        let config = dora_wgpu::train::TrainConfig {
            batch_size: pb,
            max_seq_len: ps + 1,
            steps_per_eval: 0,
            ..Default::default()
        };
        let mut trainer = dora_wgpu::train::Trainer::new(model, config, examples, vec![])?;
        trainer.train_step()?; // pipelines
        gpu.start_profiling()?;
        let t = Instant::now();
        trainer.train_step()?;
        let total = t.elapsed().as_secs_f64();
        let kernels = gpu.take_profile();
        let in_kernels: f64 = kernels.iter().map(|k| k.seconds).sum();
        println!(
            "\nprofile: one DoRA training step on {} ({pb} × {ps}), {total:.3} s with every dispatch \
             waited for, {in_kernels:.3} s of it in kernels ({})",
            fwd_model.display(),
            profile_clock(&gpu)
        );
        println!("{:>10} {:>6}  kernel", "ms", "calls");
        for k in kernels.iter().take(20) {
            println!("{:>10.2} {:>6}  {}", k.seconds * 1e3, k.calls, k.kernel);
        }
        kernel_profile = kernels;
    }

    // The ceiling again: if the machine was busy at the start, every
    // percentage above is too high, and this says so.
    let peak_end = dora_wgpu::peak::fma_peak_gflops(&gpu, repeats)?;
    println!("\nFMA peak at the end {peak_end:.1} GFLOP/s (start {peak:.1}; percentages are against the start)");
    if peak_end > 1.15 * peak {
        println!("warning: the machine was slower at the start; the percentages above overstate");
    }

    let report = json!({
        "adapter": gpu.adapter_name(),
        "adapter_report": gpu.adapter_report(),
        "backend": format!("{:?}", gpu.backend()),
        "fma_peak_gflops": peak,
        "fma_peak_end_gflops": peak_end,
        "matmul_kernels": gpu.matmul_kernels(),
        "subgroup_reductions": gpu.uses_subgroups(),
        "matmul_other_kernels": {"kernels": other_kernels, "m": m, "k": k, "n": n, "layout": "NN",
            "weight_dtype": "f32", "gflops": other_gflops, "pct_of_peak": 100.0 * other_gflops / peak},
        "matmul": matmuls,
        "matmul_cooperative": cooperative,
        "matmul_tiled": tiled,
        "dora_lora_time_ratio": dora_t / lora_t,
        "dora_lora_memory_ratio": dora_mem as f64 / lora_mem as f64,
        "dora_factored_direct_time_ratio": dora_t / direct_t,
        "attention": attention,
        "train": train,
        "train_ratios": train_ratios,
        "memory_runs": memory_runs,
        "host_loads": host_loads,
        "merged_base_forward_ratio": fwd.merged_ratio,
        "unmerged_base_forward_ratio": fwd.unmerged_ratio,
        "forward_ms": {"base": fwd.base_s * 1e3, "merged": fwd.merged_s * 1e3, "unmerged": fwd.unmerged_s * 1e3},
        "profile": kernel_profile,
        "profile_method": profile_clock(&gpu),
    });
    let finite = peak.is_finite()
        && matmuls
            .iter()
            .all(|m| m["gflops"].as_f64().is_some_and(f64::is_finite))
        && tiled.iter().all(|row| {
            row["tiles"].as_object().is_some_and(|t| {
                t.values()
                    .all(|v| v["gflops"].as_f64().is_some_and(f64::is_finite))
            })
        })
        && [dora_t / lora_t, dora_t / direct_t, fwd.merged_ratio]
            .iter()
            .all(|r| r.is_finite() && *r > 0.0)
        && train
            .iter()
            .all(|t| t.tokens_per_s.is_finite() && t.tokens_per_s > 0.0);
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
