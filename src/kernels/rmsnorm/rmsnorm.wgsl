// RMSNorm over the last dimension, one ROW_LANES-wide workgroup per row:
//   forward:  r = 1 / sqrt(mean(x^2) + eps),  y = w * (x * r)
//   backward: dx = r * w * g - x * r^3 * mean(w * g * x)
// w may be a 16-bit weight (`load_w`); it is frozen, so it gets no gradient.

// `Params` is generated from its one declaration in Rust (this folder's mod.rs).
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<WWord>;
@group(0) @binding(3) var<storage, read> g: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

fn inverse_rms(base: u32, lane: RowLane) -> f32 {
    var s = 0.0;
    for (var j = lane.lid; j < p.cols; j += ROW_LANES) {
        s = fma(x[base + j], x[base + j], s);
    }
    return inverseSqrt(workgroup_sum(s, lane) / f32(p.cols) + p.eps);
}

@compute @workgroup_size(ROW_LANES)
fn rmsnorm_forward(
    lane: RowLane,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let lid = lane.lid;
    let row = group_index(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    let r = inverse_rms(base, lane);
    for (var j = lid; j < p.cols; j += ROW_LANES) {
        out[base + j] = load_w(j) * (x[base + j] * r);
    }
}

@compute @workgroup_size(ROW_LANES)
fn rmsnorm_backward(
    lane: RowLane,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let lid = lane.lid;
    let row = group_index(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    let r = inverse_rms(base, lane);
    var s = 0.0;
    for (var j = lid; j < p.cols; j += ROW_LANES) {
        s = s + load_w(j) * g[base + j] * x[base + j];
    }
    let mean_wgx = workgroup_sum(s, lane) / f32(p.cols);
    for (var j = lid; j < p.cols; j += ROW_LANES) {
        out[base + j] = r * load_w(j) * g[base + j] - x[base + j] * r * r * r * mean_wgx;
    }
}
