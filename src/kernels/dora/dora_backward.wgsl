// The elementwise part of the fused DoRA layer's backward, in one pass over
// the [rows, cols] output gradient g, one invocation per output column j:
//   h[i, j] = g[i, j] * c[j]                       c = m / ||V||: what the products' backward takes
//   gy[j]   = sum_i g[i, j] * (y[i, j] - bias[j])  y - bias = c * (x.V^T), so dL/dm = gy / m
// gy is written per chunk of COL_CHUNK_ROWS rows (workgroup_id.y), as
// [chunks, cols], so tall gradients still fill a GPU; the caller sums the chunks.
// Three separate passes (scale, product, column sum) read g twice and write
// and re-read a [rows, cols] temporary; this reads g and y once.

// `Params` is generated from its one declaration in Rust (this folder's mod.rs).
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read> c: array<f32>;
// Bound to c when there is no bias (never used then).
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> h: array<f32>;
@group(0) @binding(6) var<storage, read_write> gy: array<f32>;

@compute @workgroup_size(64)
fn dora_backward_prep(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let col = wid.x * 64u + lid;
    if (col >= p.cols) {
        return;
    }
    let scale = c[col];
    var b = 0.0;
    if (p.has_bias != 0u) {
        b = bias[col];
    }
    var s = 0.0;
    let first = wid.y * COL_CHUNK_ROWS;
    for (var i = first; i < min(p.rows, first + COL_CHUNK_ROWS); i++) {
        let idx = i * p.cols + col;
        let gi = g[idx];
        h[idx] = gi * scale;
        s = s + gi * (y[idx] - b);
    }
    gy[wid.y * p.cols + col] = s;
}
