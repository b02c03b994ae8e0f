//! Fits a DoRA-adapted linear layer to a target map on whatever GPU this
//! machine has, and prints the loss falling.
//!
//!     cargo run --release --example quickstart
//!
//! The target is the frozen base weight W turned by a rank-4 update and with
//! its rows rescaled: exactly what DoRA's direction (W + s·B·A) and magnitude
//! (m) can express, so the loss can fall to near zero.

use std::time::Instant;

use dora_wgpu::nn::{kaiming_uniform, AdapterOptions, DoraLinear, Linear, Rng};
use dora_wgpu::ops::{self, Transpose};
use dora_wgpu::optim::{AdamW, AdamWConfig};
use dora_wgpu::{Gpu, Tensor};

const IN: usize = 128;
const OUT: usize = 96;
const RANK: usize = 4;
const TOKENS: usize = 256;
const STEPS: usize = 200;

fn main() {
    env_logger::init();
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> dora_wgpu::Result<()> {
    let gpu = Gpu::new()?;
    println!(
        "adapter: {}  backend: {:?}",
        gpu.adapter_name(),
        gpu.backend()
    );

    let mut rng = Rng::new(42);
    let w = kaiming_uniform(&mut rng, OUT, IN);
    // Target: rows of (W + U·V) rescaled by factors in [0.7, 1.3].
    let u: Vec<f32> = (0..OUT * RANK).map(|_| rng.normal() * 0.1).collect();
    let v: Vec<f32> = (0..RANK * IN).map(|_| rng.normal() * 0.1).collect();
    let row_scale: Vec<f32> = (0..OUT).map(|_| rng.uniform_in(0.7, 1.3)).collect();
    let mut target = w.clone();
    for i in 0..OUT {
        for j in 0..IN {
            let uv: f32 = (0..RANK).map(|k| u[i * RANK + k] * v[k * IN + j]).sum();
            target[i * IN + j] = row_scale[i] * (w[i * IN + j] + uv);
        }
    }
    let x: Vec<f32> = (0..TOKENS * IN).map(|_| rng.normal()).collect();

    let x = Tensor::from_f32(&gpu, &x, &[TOKENS, IN])?;
    let y_target = ops::matmul_ex(
        &x,
        &Tensor::from_f32(&gpu, &target, &[OUT, IN])?,
        Transpose::NT,
    )?;
    let base = Linear::new(Tensor::from_f32(&gpu, &w, &[OUT, IN])?, None)?;
    let options = AdapterOptions {
        rank: RANK,
        alpha: 2.0 * RANK as f32,
        ..Default::default()
    };
    let layer = DoraLinear::new(base, &options, 7)?;
    let mut opt = AdamW::new(
        layer.parameters(),
        AdamWConfig {
            lr: 1e-2,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;

    let started = Instant::now();
    let mut first = None;
    let mut last = 0.0;
    for step in 0..=STEPS {
        let y = layer.forward(&x)?;
        let loss = ops::mean_all(&ops::square(&ops::sub(&y, &y_target)?)?)?;
        if step % 25 == 0 {
            last = loss.item()?; // the only readback: once every 25 steps
            first.get_or_insert(last);
            println!("step {step:4}  loss {last:.3e}");
        }
        if step == STEPS {
            break;
        }
        opt.zero_grad();
        loss.backward()?;
        opt.step()?;
    }
    let first = first.unwrap_or(last);
    let stats = gpu.memory_stats();
    println!(
        "loss fell {:.0}x ({first:.3e} -> {last:.3e}) in {STEPS} steps, {:.2}s; peak GPU memory {:.2} MiB",
        first / last.max(f32::MIN_POSITIVE),
        started.elapsed().as_secs_f64(),
        stats.peak_allocated_bytes as f64 / (1 << 20) as f64
    );
    Ok(())
}
