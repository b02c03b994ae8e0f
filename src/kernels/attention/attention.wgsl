// Attention plumbing around the batched matmuls and the softmax:
//   split_heads: x [B, T, Hs, D] -> out [B, Hs*G, T, D], each source head
//                repeated G times (grouped-query attention's repeat_kv; G = 1 for queries)
//   merge_heads: x [B, Hs*G, T, D] -> out [B, T, Hs, D], summing the G copies
//                (the backward of split_heads; with G = 1 its inverse)
//   causal_softmax: softmax over the last dim of scores [rows, S] where row r
//                is query t = r % T at absolute position offset + t, and keys
//                s > offset + t are masked out; with a sliding window w > 0,
//                so are keys s <= offset + t - w (a query sees its w latest keys).

// `Params` is generated from its one declaration in Rust (this folder's mod.rs).
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn split_heads(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let heads = p.src_heads * p.group;
    let i = group_index(wid, nwg) * 256u + lid; // index into out [B, H, T, D]
    if (i >= p.batch * heads * p.seq * p.head_dim) {
        return;
    }
    let d = i % p.head_dim;
    let t = (i / p.head_dim) % p.seq;
    let h = (i / (p.head_dim * p.seq)) % heads;
    let b = i / (p.head_dim * p.seq * heads);
    let src = ((b * p.seq + t) * p.src_heads + h / p.group) * p.head_dim + d;
    out[i] = x[src];
}

@compute @workgroup_size(256)
fn merge_heads(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let heads = p.src_heads * p.group;
    let i = group_index(wid, nwg) * 256u + lid; // index into out [B, T, Hs, D]
    if (i >= p.batch * p.seq * p.src_heads * p.head_dim) {
        return;
    }
    let d = i % p.head_dim;
    let hs = (i / p.head_dim) % p.src_heads;
    let t = (i / (p.head_dim * p.src_heads)) % p.seq;
    let b = i / (p.head_dim * p.src_heads * p.seq);
    var s = 0.0;
    for (var g = 0u; g < p.group; g++) {
        let h = hs * p.group + g;
        s = s + x[((b * heads + h) * p.seq + t) * p.head_dim + d];
    }
    out[i] = s;
}

@compute @workgroup_size(ROW_LANES)
fn causal_softmax(
    lane: RowLane,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let lid = lane.lid;
    let row = group_index(wid, nwg);
    if (row >= p.batch) { // here `batch` counts score rows
        return;
    }
    let last = p.offset + row % p.seq; // the last key this query may see
    var first = 0u; // the first key it may see
    if (p.window > 0u && last + 1u > p.window) {
        first = last + 1u - p.window;
    }
    let base = row * p.keys;
    var m = -3.4028235e38;
    for (var j = lid; j < p.keys; j += ROW_LANES) {
        if (j >= first && j <= last) {
            m = max(m, p.scale * x[base + j]);
        }
    }
    let row_max = workgroup_max(m, lane);
    var s = 0.0;
    for (var j = lid; j < p.keys; j += ROW_LANES) {
        var e = 0.0;
        if (j >= first && j <= last) {
            e = exp(p.scale * x[base + j] - row_max);
        }
        out[base + j] = e;
        s = s + e;
    }
    let inv = 1.0 / workgroup_sum(s, lane);
    for (var j = lid; j < p.keys; j += ROW_LANES) {
        out[base + j] = out[base + j] * inv;
    }
}
