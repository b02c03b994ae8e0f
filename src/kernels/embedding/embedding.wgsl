// Embedding lookup: out[t, :] = table[ids[t], :] for a table in any weight
// dtype (`load_w` unpacks 16-bit rows), held as row blocks: this block holds
// rows first..first + vocab of a `total`-row table and writes only the ids
// that fall in it. Ids outside the whole table give zeros (the host checks ids
// before upload; this keeps a bad id from reading past the table).

// `Params` is generated from its one declaration in Rust (this folder's mod.rs).
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<WWord>;
@group(0) @binding(2) var<storage, read> ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn embedding(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = group_index(wid, nwg) * 256u + lid;
    if (i >= p.tokens * p.dim) {
        return;
    }
    let t = i / p.dim;
    let id = ids[t];
    if (id < 0 || u32(id) >= p.total) {
        out[i] = 0.0;
        return;
    }
    if (u32(id) < p.first || u32(id) - p.first >= p.vocab) {
        return; // another block's row
    }
    out[i] = load_w((u32(id) - p.first) * p.dim + i % p.dim);
}
