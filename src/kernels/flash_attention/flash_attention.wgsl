// Fused causal attention that never holds a [queries, keys] score matrix
// (FlashAttention's tiled online softmax): memory O(T·d) instead of O(T·S)
// per head, and nothing saved for backward but the output and one
// log-sum-exp per query.
//
// Layouts (no head split copies): q, out, d_out, grad_q are [B, T, H, D];
// k, v, grad_k, grad_v are [B, S, Hkv, D] with query head h reading key/value
// head h / (H / Hkv) (grouped-query attention); lse and delta are [B, H, T].
// Query t sits at absolute position offset + t and sees keys s <= offset + t,
// and with a sliding window w > 0 only those with s > offset + t - w.
//
//   forward:        out = softmax(scale·q·kᵀ) v, lse = log Σ exp(scale·q·kᵀ)
//   delta:          delta = Σ_d d_out ⊙ out            (softmax backward's row term)
//   backward_query: grad_q = scale Σ_s P (d_out·v_s − delta) k_s
//   backward_keys:  grad_v = Σ_t P d_out_t,  grad_k = scale Σ_t P (d_out_t·v − delta_t) q_t
// with P = exp(scale·q·k − lse) recomputed block by block.
//
// A workgroup of LANES invocations owns ROWS queries (KEY_ROWS keys for
// backward_keys) of one head and streams the other side in chunks of LANES:
// each invocation scores one member of the chunk against every owned row,
// then owns output dimensions i ≡ lid (mod LANES) while accumulating. The
// owned rows travel as vec4s (GROUPS of four rows), so one load of a key or
// value element feeds 4·GROUPS FMAs. Tiles live in workgroup memory (see
// `attention_tiles` in mod.rs for what each variant needs); the
// tiles of owned rows are laid out [dimension][group], four rows per vec4.
// The header sets D_MAX (head_dim ≤ D_MAX), ROWS and KEY_ROWS (4 or 8).

// `Params` is generated from its one declaration in Rust (this folder's mod.rs).
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;
@group(0) @binding(6) var<storage, read> d_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> delta: array<f32>;
@group(0) @binding(8) var<storage, read_write> grad_q: array<f32>;
@group(0) @binding(9) var<storage, read_write> grad_k: array<f32>;
@group(0) @binding(10) var<storage, read_write> grad_v: array<f32>;

const LANES: u32 = 64u;
// A masked score: below every real one.
const MASKED: f32 = -3.4028235e38;
// Row group 1 of small per-group arrays is indexed as GROUPS - 1u (or
// KEY_GROUPS - 1u): with a single group a constant index 1 is out of bounds,
// which naga refuses even in a branch that is never taken.
const GROUPS: u32 = ROWS / 4u;
const KEY_GROUPS: u32 = KEY_ROWS / 4u;

// Query-side tiles (forward, backward_query).
var<workgroup> tile_q: array<vec4<f32>, D_MAX * GROUPS>;
var<workgroup> tile_do: array<vec4<f32>, D_MAX * GROUPS>;
var<workgroup> tile_acc: array<vec4<f32>, D_MAX * GROUPS>;
var<workgroup> tile_s: array<vec4<f32>, LANES * GROUPS>;
var<workgroup> row_m: array<vec4<f32>, GROUPS>;
var<workgroup> row_l: array<vec4<f32>, GROUPS>;
var<workgroup> row_alpha: array<vec4<f32>, GROUPS>;
// Key-side tiles (backward_keys).
var<workgroup> key_k: array<vec4<f32>, D_MAX * KEY_GROUPS>;
var<workgroup> key_v: array<vec4<f32>, D_MAX * KEY_GROUPS>;
var<workgroup> key_dk: array<vec4<f32>, D_MAX * KEY_GROUPS>;
var<workgroup> key_dv: array<vec4<f32>, D_MAX * KEY_GROUPS>;
var<workgroup> key_p: array<vec4<f32>, LANES * KEY_GROUPS>;
var<workgroup> key_ds: array<vec4<f32>, LANES * KEY_GROUPS>;

fn q_index(b: u32, t: u32, h: u32, i: u32) -> u32 {
    return ((b * p.seq + t) * p.heads + h) * p.head_dim + i;
}

fn kv_index(b: u32, s: u32, hk: u32, i: u32) -> u32 {
    return ((b * p.keys + s) * p.kv_heads + hk) * p.head_dim + i;
}

fn stat_index(b: u32, h: u32, t: u32) -> u32 {
    return (b * p.heads + h) * p.seq + t;
}

// Whether query t sees key s.
fn sees(t: u32, s: u32) -> bool {
    let last = p.offset + t;
    return s <= last && (p.window == 0u || s + p.window > last);
}

// Which of queries t .. t+3 see key s (queries at or past `end` see nothing).
fn sees4(t: u32, end: u32, s: u32) -> vec4<bool> {
    let ts = vec4<u32>(t) + vec4<u32>(0u, 1u, 2u, 3u);
    let last = vec4<u32>(p.offset) + ts;
    var ok = (ts < vec4<u32>(end)) & (vec4<u32>(s) <= last);
    if (p.window > 0u) {
        ok = ok & (vec4<u32>(s + p.window) > last);
    }
    return ok;
}

// Which of keys s .. s+3 query t sees (keys at or past `end` are not owned).
fn seen4(t: u32, s: u32, end: u32) -> vec4<bool> {
    let ss = vec4<u32>(s) + vec4<u32>(0u, 1u, 2u, 3u);
    let last = vec4<u32>(p.offset + t);
    var ok = (ss < vec4<u32>(end)) & (ss <= last);
    if (p.window > 0u) {
        ok = ok & (ss + vec4<u32>(p.window) > last);
    }
    return ok;
}

// The first key any of queries t0.. sees (keys before it are skipped whole).
fn first_key(t0: u32) -> u32 {
    let last = p.offset + t0;
    if (p.window > 0u && last + 1u > p.window) {
        return last + 1u - p.window;
    }
    return 0u;
}

// The block of queries workgroup g owns: batch b (none past the batch),
// head h reading key/value head hk, queries t0 .. t0 + rows.
struct QueryBlock {
    b: u32,
    h: u32,
    hk: u32,
    t0: u32,
    rows: u32,
}

fn query_block(g: u32) -> QueryBlock {
    let blocks = (p.seq + ROWS - 1u) / ROWS;
    let h = (g / blocks) % p.heads;
    let t0 = (g % blocks) * ROWS;
    let hk = h / (p.heads / p.kv_heads);
    return QueryBlock(g / (blocks * p.heads), h, hk, t0, min(ROWS, p.seq - t0));
}

// Loads `rows` query rows into tile_q (zeros past them and past head_dim).
fn load_q_rows(lid: u32, b: u32, h: u32, t0: u32, rows: u32) {
    for (var e = lid; e < ROWS * D_MAX; e += LANES) {
        let r = e / D_MAX;
        let i = e % D_MAX;
        var x = 0.0;
        if (r < rows && i < p.head_dim) {
            x = q[q_index(b, t0 + r, h, i)];
        }
        tile_q[i * GROUPS + r / 4u][r % 4u] = x;
    }
}

// The same for d_out into tile_do (a separate function: an entry point that
// reads no d_out must not reference its binding).
fn load_d_out_rows(lid: u32, b: u32, h: u32, t0: u32, rows: u32) {
    for (var e = lid; e < ROWS * D_MAX; e += LANES) {
        let r = e / D_MAX;
        let i = e % D_MAX;
        var x = 0.0;
        if (r < rows && i < p.head_dim) {
            x = d_out[q_index(b, t0 + r, h, i)];
        }
        tile_do[i * GROUPS + r / 4u][r % 4u] = x;
    }
}

@compute @workgroup_size(64)
fn attention_forward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let blk = query_block(group_index(wid, nwg));
    if (blk.b >= p.batch) {
        return;
    }
    let b = blk.b;
    let h = blk.h;
    let hk = blk.hk;
    let t0 = blk.t0;
    let rows = blk.rows;
    let d = p.head_dim;
    load_q_rows(lid, b, h, t0, rows);
    for (var e = lid; e < D_MAX * GROUPS; e += LANES) {
        tile_acc[e] = vec4<f32>(0.0);
    }
    if (lid < GROUPS) {
        row_m[lid] = vec4<f32>(MASKED);
        row_l[lid] = vec4<f32>(0.0);
    }
    workgroupBarrier();
    let last = p.offset + t0 + rows - 1u; // the last key any owned query sees
    for (var c0 = first_key(t0); c0 <= last; c0 += LANES) {
        // Scores: invocation lid takes key c0 + lid against every owned query.
        let s = c0 + lid;
        var dot0 = vec4<f32>(0.0);
        var dot1 = vec4<f32>(0.0);
        if (s <= last) {
            let kb = kv_index(b, s, hk, 0u);
            for (var i = 0u; i < d; i++) {
                let kv = vec4<f32>(k[kb + i]);
                dot0 = fma(tile_q[i * GROUPS], kv, dot0);
                if (GROUPS == 2u) {
                    dot1 = fma(tile_q[i * GROUPS + 1u], kv, dot1);
                }
            }
        }
        tile_s[lid * GROUPS] = select(vec4<f32>(MASKED), p.scale * dot0, sees4(t0, t0 + rows, s));
        if (GROUPS == 2u) {
            tile_s[lid * GROUPS + 1u] =
                select(vec4<f32>(MASKED), p.scale * dot1, sees4(t0 + 4u, t0 + rows, s));
        }
        workgroupBarrier();
        // Online softmax, one invocation per query: rescale what came before
        // to the new running maximum, turn this chunk's scores into weights.
        if (lid < ROWS) {
            let at = lid / 4u;
            let c = lid % 4u;
            var chunk_max = MASKED;
            for (var j = 0u; j < LANES; j++) {
                chunk_max = max(chunk_max, tile_s[j * GROUPS + at][c]);
            }
            let m_old = row_m[at][c];
            let m_new = max(m_old, chunk_max);
            var alpha = 1.0;
            if (chunk_max > MASKED) {
                alpha = exp(m_old - m_new);
                row_m[at][c] = m_new;
            }
            var sum = 0.0;
            for (var j = 0u; j < LANES; j++) {
                let x = tile_s[j * GROUPS + at][c];
                var w = 0.0;
                if (x > MASKED) {
                    w = exp(x - m_new);
                }
                tile_s[j * GROUPS + at][c] = w;
                sum += w;
            }
            row_l[at][c] = row_l[at][c] * alpha + sum;
            row_alpha[at][c] = alpha;
        }
        workgroupBarrier();
        let n = min(LANES, last + 1u - c0);
        for (var i = lid; i < d; i += LANES) {
            var acc0 = tile_acc[i * GROUPS] * row_alpha[0];
            var acc1 = vec4<f32>(0.0);
            if (GROUPS == 2u) {
                acc1 = tile_acc[i * GROUPS + 1u] * row_alpha[GROUPS - 1u];
            }
            for (var j = 0u; j < n; j++) {
                let vv = vec4<f32>(v[kv_index(b, c0 + j, hk, i)]);
                acc0 = fma(tile_s[j * GROUPS], vv, acc0);
                if (GROUPS == 2u) {
                    acc1 = fma(tile_s[j * GROUPS + 1u], vv, acc1);
                }
            }
            tile_acc[i * GROUPS] = acc0;
            if (GROUPS == 2u) {
                tile_acc[i * GROUPS + 1u] = acc1;
            }
        }
        workgroupBarrier();
    }
    // Every query sees at least itself, so row_l > 0.
    for (var e = lid; e < rows * d; e += LANES) {
        let r = e / d;
        let i = e % d;
        out[q_index(b, t0 + r, h, i)] = tile_acc[i * GROUPS + r / 4u][r % 4u] / row_l[r / 4u][r % 4u];
    }
    if (lid < rows) {
        let m = row_m[lid / 4u][lid % 4u];
        lse[stat_index(b, h, t0 + lid)] = m + log(row_l[lid / 4u][lid % 4u]);
    }
}

@compute @workgroup_size(64)
fn attention_delta(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let e = group_index(wid, nwg) * LANES + lid; // (b, t, h), h fastest
    if (e >= p.batch * p.seq * p.heads) {
        return;
    }
    let h = e % p.heads;
    let t = (e / p.heads) % p.seq;
    let b = e / (p.heads * p.seq);
    let base = e * p.head_dim;
    var sum = 0.0;
    for (var i = 0u; i < p.head_dim; i++) {
        sum += d_out[base + i] * out[base + i];
    }
    delta[stat_index(b, h, t)] = sum;
}

@compute @workgroup_size(64)
fn attention_backward_query(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let blk = query_block(group_index(wid, nwg));
    if (blk.b >= p.batch) {
        return;
    }
    let b = blk.b;
    let h = blk.h;
    let hk = blk.hk;
    let t0 = blk.t0;
    let rows = blk.rows;
    let d = p.head_dim;
    load_q_rows(lid, b, h, t0, rows);
    load_d_out_rows(lid, b, h, t0, rows);
    for (var e = lid; e < D_MAX * GROUPS; e += LANES) {
        tile_acc[e] = vec4<f32>(0.0);
    }
    // Per-query log-sum-exp and delta (rows past the block: anything finite).
    if (lid < ROWS) {
        var m = 0.0;
        var dl = 0.0;
        if (lid < rows) {
            m = lse[stat_index(b, h, t0 + lid)];
            dl = delta[stat_index(b, h, t0 + lid)];
        }
        row_m[lid / 4u][lid % 4u] = m;
        row_l[lid / 4u][lid % 4u] = dl;
    }
    workgroupBarrier();
    let last = p.offset + t0 + rows - 1u;
    for (var c0 = first_key(t0); c0 <= last; c0 += LANES) {
        // dS = P ⊙ (d_out·v − delta) for key c0 + lid against every owned query.
        let s = c0 + lid;
        var qk0 = vec4<f32>(0.0);
        var qk1 = vec4<f32>(0.0);
        var dv0 = vec4<f32>(0.0);
        var dv1 = vec4<f32>(0.0);
        if (s <= last) {
            let kb = kv_index(b, s, hk, 0u);
            for (var i = 0u; i < d; i++) {
                let kv = vec4<f32>(k[kb + i]);
                let vv = vec4<f32>(v[kb + i]);
                qk0 = fma(tile_q[i * GROUPS], kv, qk0);
                dv0 = fma(tile_do[i * GROUPS], vv, dv0);
                if (GROUPS == 2u) {
                    qk1 = fma(tile_q[i * GROUPS + 1u], kv, qk1);
                    dv1 = fma(tile_do[i * GROUPS + 1u], vv, dv1);
                }
            }
        }
        let ds0 = exp(p.scale * qk0 - row_m[0]) * (dv0 - row_l[0]);
        tile_s[lid * GROUPS] = select(vec4<f32>(0.0), ds0, sees4(t0, t0 + rows, s));
        if (GROUPS == 2u) {
            let ds1 = exp(p.scale * qk1 - row_m[GROUPS - 1u]) * (dv1 - row_l[GROUPS - 1u]);
            tile_s[lid * GROUPS + 1u] = select(vec4<f32>(0.0), ds1, sees4(t0 + 4u, t0 + rows, s));
        }
        workgroupBarrier();
        let n = min(LANES, last + 1u - c0);
        for (var i = lid; i < d; i += LANES) {
            var acc0 = tile_acc[i * GROUPS];
            var acc1 = tile_acc[i * GROUPS + GROUPS - 1u];
            for (var j = 0u; j < n; j++) {
                let kv = vec4<f32>(k[kv_index(b, c0 + j, hk, i)]);
                acc0 = fma(tile_s[j * GROUPS], kv, acc0);
                if (GROUPS == 2u) {
                    acc1 = fma(tile_s[j * GROUPS + 1u], kv, acc1);
                }
            }
            tile_acc[i * GROUPS] = acc0;
            if (GROUPS == 2u) {
                tile_acc[i * GROUPS + 1u] = acc1;
            }
        }
        workgroupBarrier();
    }
    for (var e = lid; e < rows * d; e += LANES) {
        let r = e / d;
        let i = e % d;
        grad_q[q_index(b, t0 + r, h, i)] = p.scale * tile_acc[i * GROUPS + r / 4u][r % 4u];
    }
}

@compute @workgroup_size(64)
fn attention_backward_keys(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let blocks = (p.keys + KEY_ROWS - 1u) / KEY_ROWS;
    let g = group_index(wid, nwg);
    let hk = (g / blocks) % p.kv_heads;
    let b = g / (blocks * p.kv_heads);
    if (b >= p.batch) {
        return;
    }
    let d = p.head_dim;
    let s0 = (g % blocks) * KEY_ROWS;
    let rows = min(KEY_ROWS, p.keys - s0);
    let s_end = s0 + rows;
    for (var e = lid; e < KEY_ROWS * D_MAX; e += LANES) {
        let r = e / D_MAX;
        let i = e % D_MAX;
        var kx = 0.0;
        var vx = 0.0;
        if (r < rows && i < d) {
            kx = k[kv_index(b, s0 + r, hk, i)];
            vx = v[kv_index(b, s0 + r, hk, i)];
        }
        key_k[i * KEY_GROUPS + r / 4u][r % 4u] = kx;
        key_v[i * KEY_GROUPS + r / 4u][r % 4u] = vx;
    }
    for (var e = lid; e < D_MAX * KEY_GROUPS; e += LANES) {
        key_dk[e] = vec4<f32>(0.0);
        key_dv[e] = vec4<f32>(0.0);
    }
    workgroupBarrier();
    // The queries that see some key of the block: t >= s0 - offset, and with a
    // window t < s_last + window - offset.
    var t_first = 0u;
    if (s0 > p.offset) {
        t_first = s0 - p.offset;
    }
    var t_end = p.seq;
    if (p.window > 0u) {
        let reach = s_end - 1u + p.window;
        t_end = select(0u, min(p.seq, reach - p.offset), reach > p.offset);
    }
    let group = p.heads / p.kv_heads;
    for (var hg = 0u; hg < group; hg++) {
        let h = hk * group + hg;
        for (var c0 = t_first; c0 < t_end; c0 += LANES) {
            // P and dS for query c0 + lid against every owned key.
            let t = c0 + lid;
            var qk0 = vec4<f32>(0.0);
            var qk1 = vec4<f32>(0.0);
            var dv0 = vec4<f32>(0.0);
            var dv1 = vec4<f32>(0.0);
            var m = 0.0;
            var dl = 0.0;
            if (t < t_end) {
                m = lse[stat_index(b, h, t)];
                dl = delta[stat_index(b, h, t)];
                let qb = q_index(b, t, h, 0u);
                for (var i = 0u; i < d; i++) {
                    let qv = vec4<f32>(q[qb + i]);
                    let gv = vec4<f32>(d_out[qb + i]);
                    qk0 = fma(key_k[i * KEY_GROUPS], qv, qk0);
                    dv0 = fma(key_v[i * KEY_GROUPS], gv, dv0);
                    if (KEY_GROUPS == 2u) {
                        qk1 = fma(key_k[i * KEY_GROUPS + 1u], qv, qk1);
                        dv1 = fma(key_v[i * KEY_GROUPS + 1u], gv, dv1);
                    }
                }
            }
            let p0 = select(vec4<f32>(0.0), exp(p.scale * qk0 - m), seen4(t, s0, s_end) & vec4<bool>(t < t_end));
            key_p[lid * KEY_GROUPS] = p0;
            key_ds[lid * KEY_GROUPS] = p0 * (dv0 - dl);
            if (KEY_GROUPS == 2u) {
                let p1 = select(vec4<f32>(0.0), exp(p.scale * qk1 - m), seen4(t, s0 + 4u, s_end) & vec4<bool>(t < t_end));
                key_p[lid * KEY_GROUPS + 1u] = p1;
                key_ds[lid * KEY_GROUPS + 1u] = p1 * (dv1 - dl);
            }
            workgroupBarrier();
            let n = min(LANES, t_end - c0);
            for (var i = lid; i < d; i += LANES) {
                var dk0 = key_dk[i * KEY_GROUPS];
                var dv_0 = key_dv[i * KEY_GROUPS];
                var dk1 = key_dk[i * KEY_GROUPS + KEY_GROUPS - 1u];
                var dv_1 = key_dv[i * KEY_GROUPS + KEY_GROUPS - 1u];
                for (var j = 0u; j < n; j++) {
                    let at = q_index(b, c0 + j, h, i);
                    let gv = vec4<f32>(d_out[at]);
                    let qv = vec4<f32>(q[at]);
                    dv_0 = fma(key_p[j * KEY_GROUPS], gv, dv_0);
                    dk0 = fma(key_ds[j * KEY_GROUPS], qv, dk0);
                    if (KEY_GROUPS == 2u) {
                        dv_1 = fma(key_p[j * KEY_GROUPS + 1u], gv, dv_1);
                        dk1 = fma(key_ds[j * KEY_GROUPS + 1u], qv, dk1);
                    }
                }
                key_dk[i * KEY_GROUPS] = dk0;
                key_dv[i * KEY_GROUPS] = dv_0;
                if (KEY_GROUPS == 2u) {
                    key_dk[i * KEY_GROUPS + 1u] = dk1;
                    key_dv[i * KEY_GROUPS + 1u] = dv_1;
                }
            }
            workgroupBarrier();
        }
    }
    for (var e = lid; e < rows * d; e += LANES) {
        let r = e / d;
        let i = e % d;
        let at = kv_index(b, s0 + r, hk, i);
        grad_k[at] = p.scale * key_dk[i * KEY_GROUPS + r / 4u][r % 4u];
        grad_v[at] = key_dv[i * KEY_GROUPS + r / 4u][r % 4u];
    }
}
