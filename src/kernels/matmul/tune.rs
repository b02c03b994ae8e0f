//! The tiled matmul's tile for one product: the context's forced tile, the
//! tuned winner of the product's shape class, or a default from its shape.
//! Tuning times each candidate tile on the product's own operands (into a
//! scratch output) the first time a shape class is seen, within a small
//! budget, and remembers the fastest per adapter (src/gpu/matmul_tiles.rs).
//! Every tile gives bit-identical results (matmul_tiled.wgsl), so
//! the choice changes speed only.

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::gpu::Gpu;
use crate::gpu::MatmulTile;
use crate::tensor::DType;

/// Wall-clock budget for timing one shape class's candidates (pipeline
/// compilation excluded); a candidate started within it is finished.
const BUDGET: Duration = Duration::from_millis(300);
/// Timed runs per candidate after a first, untimed one.
const RUNS: usize = 3;

/// What decides the tile of a product: its layout, operand types, and sizes
/// rounded up to powers of two.
pub(super) struct ShapeClass {
    pub trans_a: bool,
    pub trans_b: bool,
    pub b_dtype: DType,
    pub epilogue: bool,
    pub vec4: bool,
    pub batch: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

impl ShapeClass {
    /// The key of the class in the tuning cache.
    fn key(&self) -> String {
        let b = |x: usize| x.max(1).next_power_of_two();
        format!(
            "{}{} {} epilogue={} vec4={} batch={} m={} k={} n={}",
            if self.trans_a { 'T' } else { 'N' },
            if self.trans_b { 'T' } else { 'N' },
            self.b_dtype.name(),
            self.epilogue,
            self.vec4,
            b(self.batch),
            b(self.m),
            b(self.k),
            b(self.n)
        )
    }
}

/// The tile for a product of class `class`; `time(tile)` runs the product
/// once with that tile and returns its seconds (used only when tuning).
pub(super) fn tile_for(
    gpu: &Gpu,
    class: &ShapeClass,
    mut time: impl FnMut(MatmulTile) -> Result<f64>,
) -> Result<MatmulTile> {
    let choice = &gpu.inner.matmul_tiles;
    if let Some(t) = choice.forced {
        return Ok(t);
    }
    let default = MatmulTile::default_for(class.m, class.n, class.batch, &choice.candidates);
    let Some(cache) = &choice.tuned else {
        return Ok(default);
    };
    let key = class.key();
    if let Some(t) = cache.lock().unwrap().get(&key) {
        return Ok(t);
    }
    // The default first: it is what runs when the budget ends early.
    let mut order = vec![default];
    order.extend(choice.candidates.iter().filter(|&&t| t != default));
    let started = Instant::now();
    let mut best: Option<(f64, MatmulTile)> = None;
    let mut times = Vec::new();
    for tile in order {
        if started.elapsed() > BUDGET {
            break;
        }
        time(tile)?; // warm-up (the pipeline is compiled before the clock starts)
        let mut fastest = f64::INFINITY;
        for _ in 0..RUNS {
            fastest = fastest.min(time(tile)?);
            if started.elapsed() > BUDGET {
                break;
            }
        }
        times.push(format!("{} {:.1} µs", tile.name(), fastest * 1e6));
        if best.is_none_or(|(s, _)| fastest < s) {
            best = Some((fastest, tile));
        }
    }
    let winner = best.map_or(default, |(_, t)| t);
    log::info!(
        "matmul tile tuning on {}: {key} -> {} ({})",
        gpu.adapter_name(),
        winner.name(),
        times.join(", ")
    );
    if let Err(e) = cache.lock().unwrap().insert(&key, winner) {
        log::warn!("{e}");
    }
    Ok(winner)
}
