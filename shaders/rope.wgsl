// Rotary position embedding (Hugging Face's rotate_half convention) on
// x [batch, seq, heads, head_dim]: for i < head_dim / 2, with angle from the
// host-computed tables cos_t/sin_t [position, head_dim / 2]:
//   out[i]        = x[i] * cos - x[i + half] * sin
//   out[i + half] = x[i + half] * cos + x[i] * sin
// Position of token t is `offset + t`. `direction` = -1 applies the inverse
// rotation (the backward pass).

struct Params {
    batch: u32,
    seq: u32,
    heads: u32,
    head_dim: u32,
    offset: u32,
    direction: f32,
}

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
    let half = p.head_dim / 2u;
    let i = group_index(wid, nwg) * 256u + lid; // one invocation per rotated pair
    if (i >= p.batch * p.seq * p.heads * half) {
        return;
    }
    let k = i % half;
    let row = i / half; // (b, t, h)
    let t = (row / p.heads) % p.seq;
    let pos = p.offset + t;
    let c = cos_t[pos * half + k];
    let s = p.direction * sin_t[pos * half + k];
    let base = row * p.head_dim;
    let x1 = x[base + k];
    let x2 = x[base + k + half];
    out[base + k] = x1 * c - x2 * s;
    out[base + k + half] = x2 * c + x1 * s;
}
