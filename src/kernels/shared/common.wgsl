// Shared helpers, prepended to every kernel (the row reductions follow it:
// row_reduce.wgsl, or row_reduce_subgroups.wgsl where the device has subgroups).
// Workgroups that reduce one row are ROW_LANES invocations wide: rows here are
// mostly short (attention scores, hidden states), and a narrower group needs
// fewer barrier rounds (which software rasterizers pay dearly for) while a
// 64-wide group still fills a warp or wavefront on real GPUs.

const ROW_LANES: u32 = 64u;

// Rows per chunk of a column sum (reduce.wgsl's sum_cols, the DoRA backward's
// column sums): each chunk is summed by its own invocations, in parallel.
const COL_CHUNK_ROWS: u32 = 32u;

var<workgroup> scratch: array<f32, ROW_LANES>;

// tanh as 1 - 2/(e^2u + 1) with u clamped, so no backend's tanh overflows
// to NaN for large |x| (GELU's tanh approximation, logit soft-capping).
fn tanh_clamped(x: f32) -> f32 {
    let u = clamp(x, -15.0, 15.0);
    return 1.0 - 2.0 / (exp(2.0 * u) + 1.0);
}

// Linear workgroup id of a 2-D grid (grids split at 65535 groups per dimension).
fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}
