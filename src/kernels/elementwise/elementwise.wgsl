// Elementwise kernels, one invocation per element (256 per workgroup, 2-D grid).
// The generated header defines `unary(x)` / `binary(a, b)` for the op and
// `b_index(i)` for how `b` broadcasts: same shape, along rows (b has the last
// dimension's length) or per row (b has one value per row).

// `Params` is generated from its one declaration in Rust (this folder's mod.rs).
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> w: array<WWord>;
@group(0) @binding(5) var<storage, read_write> packed: array<u32>;

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

// out[j, i] = x[i, j] for an [n / cols, cols] matrix
@compute @workgroup_size(256)
fn transpose2d(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = element_index(lid, wid, nwg);
    if (i < p.n) {
        let rows = p.n / p.cols;
        let r = i / p.cols;
        let c = i % p.cols;
        out[c * rows + r] = x[i];
    }
}

// A counter-based hash (PCG output function): the same (seed, i) always gives
// the same bits, so backward regenerates the forward's dropout mask.
fn hash(seed: u32, i: u32) -> u32 {
    var v = i * 747796405u + 2891336453u + seed * 277803737u;
    v = ((v >> ((v >> 28u) + 4u)) ^ v) * 277803737u;
    v = (v >> 22u) ^ v;
    v = v * 747796405u + seed;
    v = ((v >> ((v >> 28u) + 4u)) ^ v) * 277803737u;
    return (v >> 22u) ^ v;
}

// Inverted dropout: out = x / (1 - p) where kept, 0 where dropped; alpha = p.
@compute @workgroup_size(256)
fn dropout(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = element_index(lid, wid, nwg);
    if (i < p.n) {
        let u = f32(hash(p.seed, i) >> 8u) * (1.0 / 16777216.0);
        out[i] = select(0.0, x[i] / (1.0 - p.alpha), u >= p.alpha);
    }
}

// Packs f32 values into 16-bit words, two per u32, rounding to nearest even
// (`narrow` from the generated header picks bf16 or f16). One invocation per word.
@compute @workgroup_size(256)
fn pack16(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let word = element_index(lid, wid, nwg);
    let first = word * 2u;
    if (first < p.n) {
        var hi = 0u;
        if (first + 1u < p.n) {
            hi = narrow(x[first + 1u]);
        }
        packed[word] = narrow(x[first]) | (hi << 16u);
    }
}
