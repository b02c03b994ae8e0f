// C[b] = alpha * A[b] * op(B[b]) + beta * C[b] for a short A (few rows M):
// token-by-token generation and rank-r products, where the tiled kernel
// would spend most of its 64-row tiles on padding. One invocation per output
// column n computes up to four rows at a time, reading B once per four rows.
// Same parameters and bindings (matmul_io.wgsl) and header (`load_b`,
// `epilogue`) as matmul_tiled.wgsl.

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let n = wid.x * 256u + lid;
    if (n >= p.n) {
        return;
    }
    let a_base = wid.z * p.stride_a;
    let b_base = wid.z * p.stride_b;
    let c_base = wid.z * p.stride_c;
    // Element stride of op(B)[k, n] along k, and the offset of column n.
    let b_stride_k = select(p.n, 1u, TRANS_B);
    let b_col = select(n, n * p.k, TRANS_B);
    for (var m0 = 0u; m0 < p.m; m0 += 4u) {
        // Rows past M read row M - 1 (in bounds) and are never stored.
        let last = p.m - 1u;
        let r0 = a_base + m0 * p.k;
        let r1 = a_base + min(m0 + 1u, last) * p.k;
        let r2 = a_base + min(m0 + 2u, last) * p.k;
        let r3 = a_base + min(m0 + 3u, last) * p.k;
        var acc = vec4<f32>(0.0);
        for (var k = 0u; k < p.k; k++) {
            let bv = load_b(b_base + b_col + k * b_stride_k);
            acc = fma(vec4<f32>(a[r0 + k], a[r1 + k], a[r2 + k], a[r3 + k]), vec4<f32>(bv), acc);
        }
        for (var r = 0u; r < 4u; r++) {
            if (m0 + r < p.m) {
                let idx = c_base + (m0 + r) * p.n + n;
                var v = p.alpha * acc[r];
                if (p.beta != 0.0) {
                    v = v + p.beta * c[idx];
                }
                c[idx] = epilogue(v, n);
            }
        }
    }
}
