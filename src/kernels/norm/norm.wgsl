// Row L2 norms of an [rows, cols] weight: out[i] = ||W_i||_2. For a Hugging
// Face [out, in] weight this is the DoRA paper's column norm ||.||_c.
// One ROW_LANES-wide workgroup per row; W may be 16-bit (`load_w` unpacks it).

// `Params` is generated from its one declaration in Rust (this folder's mod.rs).
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<WWord>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(ROW_LANES)
fn row_norm(
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
        let v = load_w(row * p.cols + j);
        s = fma(v, v, s);
    }
    let total = workgroup_sum(s, lane);
    if (lid == 0u) {
        out[row] = sqrt(total);
    }
}
