// Copies a band of columns between two row-major matrices with the same
// number of rows: out[r, dst_start + c] = x[r, src_start + c] for c < len.
// Slicing q, k and v out of a fused qkv projection uses it forward; its
// backward places the gradient back into zeros the same way.

// `Params` is generated from its one declaration in Rust (this folder's mod.rs).
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn copy_cols(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = group_index(wid, nwg) * 256u + lid;
    if (i >= p.rows * p.len) {
        return;
    }
    let r = i / p.len;
    let c = i % p.len;
    out[r * p.dst_cols + p.dst_start + c] = x[r * p.src_cols + p.src_start + c];
}
