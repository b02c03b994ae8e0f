// Elementwise kernels, one invocation per element (256 per workgroup, 2-D grid).
// The generated header defines `unary(x)` / `binary(a, b)` for the op and
// `b_index(i)` for how `b` broadcasts: same shape, along rows (b has the last
// dimension's length) or per row (b has one value per row).

struct Params {
    n: u32,
    cols: u32,
    alpha: f32,
    beta: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> w: array<WWord>;

fn element_index(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

// out = unary(x)
@compute @workgroup_size(256)
fn map_unary(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = element_index(lid, wid, nwg);
    if (i < p.n) {
        out[i] = unary(x[i]);
    }
}

// out = binary(x, y broadcast)
@compute @workgroup_size(256)
fn map_binary(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = element_index(lid, wid, nwg);
    if (i < p.n) {
        out[i] = binary(x[i], y[b_index(i)]);
    }
}

// out = out + alpha * x, in place (gradient accumulation)
@compute @workgroup_size(256)
fn add_assign(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = element_index(lid, wid, nwg);
    if (i < p.n) {
        out[i] = fma(p.alpha, x[i], out[i]);
    }
}

// out = f32(w): widen a 16-bit tensor
@compute @workgroup_size(256)
fn widen(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = element_index(lid, wid, nwg);
    if (i < p.n) {
        out[i] = load_w(i);
    }
}
