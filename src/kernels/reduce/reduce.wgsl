// Reductions of an [rows, cols] matrix, scaled by alpha:
//   sum_rows: out[i] = alpha * sum_j x[i, j]   (one ROW_LANES-wide workgroup per row)
//   sum_cols: out[c, j] = alpha * sum of x[i, j] over the rows i of chunk c
//     (COL_CHUNK_ROWS rows; workgroup_id.y = c): one invocation per column
//     and chunk, so tall matrices still fill a GPU; the caller sums the
//     chunks' rows again while there is more than one
//   sum_squares_into: out[rows] = alpha * sum x^2 over all cols elements (one
//     workgroup; gradient norms write one slot per parameter of a shared buffer)

// `Params` is generated from its one declaration in Rust (this folder's mod.rs).
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(ROW_LANES)
fn sum_rows(
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
        s = s + x[row * p.cols + j];
    }
    let total = workgroup_sum(s, lane);
    if (lid == 0u) {
        out[row] = p.alpha * total;
    }
}

@compute @workgroup_size(256)
fn sum_cols(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let col = wid.x * 256u + lid;
    if (col >= p.cols) {
        return;
    }
    let first = wid.y * COL_CHUNK_ROWS;
    let end = min(p.rows, first + COL_CHUNK_ROWS);
    var s = 0.0;
    for (var i = first; i < end; i++) {
        s = s + x[i * p.cols + col];
    }
    out[wid.y * p.cols + col] = p.alpha * s;
}

@compute @workgroup_size(ROW_LANES)
fn sum_squares_into(lane: RowLane) {
    let lid = lane.lid;
    var s = 0.0;
    for (var j = lid; j < p.cols; j += ROW_LANES) {
        let v = x[j];
        s = s + v * v;
    }
    let total = workgroup_sum(s, lane);
    if (lid == 0u) {
        out[p.rows] = p.alpha * total;
    }
}
