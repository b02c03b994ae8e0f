// Row-wise softmax over the last dimension, one ROW_LANES-wide workgroup per row.
//   softmax_forward:  y = exp(x - max) / sum(exp(x - max))
//   softmax_backward: dx = y * (g - sum(g * y))

// `Params` is generated from its one declaration in Rust (this folder's mod.rs).
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(ROW_LANES)
fn softmax_forward(
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
    var m = -3.4028235e38;
    for (var j = lid; j < p.cols; j += ROW_LANES) {
        m = max(m, x[base + j]);
    }
    let row_max = workgroup_max(m, lane);
    var s = 0.0;
    for (var j = lid; j < p.cols; j += ROW_LANES) {
        let e = exp(x[base + j] - row_max);
        out[base + j] = e;
        s = s + e;
    }
    let inv = 1.0 / workgroup_sum(s, lane);
    for (var j = lid; j < p.cols; j += ROW_LANES) {
        out[base + j] = out[base + j] * inv;
    }
}

// Here `x` holds the forward output y.
@compute @workgroup_size(ROW_LANES)
fn softmax_backward(
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
    var s = 0.0;
    for (var j = lid; j < p.cols; j += ROW_LANES) {
        s = fma(g[base + j], x[base + j], s);
    }
    let dot = workgroup_sum(s, lane);
    for (var j = lid; j < p.cols; j += ROW_LANES) {
        out[base + j] = x[base + j] * (g[base + j] - dot);
    }
}
