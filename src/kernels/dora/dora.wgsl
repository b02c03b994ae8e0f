// DoRA recomposition (the merge kernel), one ROW_LANES-wide workgroup per output row i:
//   V_i  = W_i + s * B_i . A          (W [out, in], A [r, in], B [out, r])
//   n_i  = ||V_i||_2
//   W'_i = (m_i / n_i) * V_i
// Writes W' and n (kept so that unmerge can restore W exactly).

// `Params` is generated from its one declaration in Rust (this folder's mod.rs).
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<WWord>;
@group(0) @binding(2) var<storage, read> lora_a: array<f32>;
@group(0) @binding(3) var<storage, read> lora_b: array<f32>;
@group(0) @binding(4) var<storage, read> magnitude: array<f32>;
@group(0) @binding(5) var<storage, read_write> merged: array<f32>;
@group(0) @binding(6) var<storage, read_write> norms: array<f32>;

@compute @workgroup_size(ROW_LANES)
fn recompose(
    lane: RowLane,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let lid = lane.lid;
    let row = group_index(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    var s = 0.0;
    for (var j = lid; j < p.cols; j += ROW_LANES) {
        var low_rank = 0.0;
        for (var k = 0u; k < p.rank; k++) {
            low_rank = fma(lora_b[row * p.rank + k], lora_a[k * p.cols + j], low_rank);
        }
        let v = load_w(row * p.cols + j) + p.scale * low_rank;
        merged[row * p.cols + j] = v;
        s = fma(v, v, s);
    }
    let norm = sqrt(workgroup_sum(s, lane));
    let c = magnitude[row] / norm;
    // Each invocation rescales only the elements it wrote itself: no barrier needed.
    for (var j = lid; j < p.cols; j += ROW_LANES) {
        merged[row * p.cols + j] = c * merged[row * p.cols + j];
    }
    if (lid == 0u) {
        norms[row] = norm;
    }
}
