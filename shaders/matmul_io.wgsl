// The parameters and operands every matmul kernel shares (matmul_tiled.wgsl,
// matmul_skinny.wgsl, matmul_broadcast.wgsl), prepended to each by
// src/shaders.rs. Params mirrors `Params` in src/ops/matmul.rs; `AWord` and
// `BWord`, the words A and B are read in, come from the generated header.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    stride_a: u32,
    stride_b: u32,
    stride_c: u32,
    alpha: f32,
    beta: f32,
    has_bias: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<AWord>;
@group(0) @binding(2) var<storage, read> b: array<BWord>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
