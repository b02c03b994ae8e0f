// Rotary position embedding (Hugging Face's rotate_half convention) on
// x [batch, seq, heads, head_dim], rotating the first rotary_dim dimensions
// of each head: for i < half = rotary_dim / 2, with angle from the
// host-computed tables cos_t/sin_t [position, half]:
//   out[i]        = x[i] * cos - x[i + half] * sin
//   out[i + half] = x[i + half] * cos + x[i] * sin
// Dimensions rotary_dim.. pass through (partial rotary, Phi-3 style).
// Position of token t is `offset + t`. `direction` = -1 applies the inverse
// rotation (the backward pass).

// `Params` is generated from its one declaration in Rust (this folder's mod.rs).
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn rope(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let slots = p.head_dim / 2u; // one invocation per pair of dimensions
    let i = group_index(wid, nwg) * 256u + lid;
    if (i >= p.batch * p.seq * p.heads * slots) {
        return;
    }
    let k = i % slots;
    let row = i / slots; // (b, t, h)
    let base = row * p.head_dim;
    let half = p.rotary_dim / 2u;
    if (k >= half) { // two pass-through dimensions
        let d = p.rotary_dim + 2u * (k - half);
        out[base + d] = x[base + d];
        out[base + d + 1u] = x[base + d + 1u];
        return;
    }
    let t = (row / p.heads) % p.seq;
    let pos = p.offset + t;
    let c = cos_t[pos * half + k];
    let s = p.direction * sin_t[pos * half + k];
    let x1 = x[base + k];
    let x2 = x[base + k + half];
    out[base + k] = x1 * c - x2 * s;
    out[base + k + half] = x2 * c + x1 * s;
}
