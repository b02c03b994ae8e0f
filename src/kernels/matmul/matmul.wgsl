// C[b] = alpha * op(A[b]) * op(B[b]) + beta * C[b]
// op(A) is M x K (A stored [K, M] when TRANS_A), op(B) is K x N (B stored
// [N, K] when TRANS_B: the Hugging Face [out, in] weight layout). B may be a
// 16-bit weight: `load_b` (from the generated header) unpacks it.
// `epilogue` (from the header) may then scale each output per column and add
// a bias: C = col_scale[n] * C + bias[n] (the fused DoRA forward: m/||V||, bias).
// The parameters `p` and operands `a`, `b`, `c` are declared in matmul_io.wgsl.
// Tiling: a 16x16 workgroup computes a 64x64 tile of C, 4x4 outputs per
// invocation, staging 64x16 slices of A and 16x64 slices of B in workgroup memory.

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

var<workgroup> tile_a: array<f32, 1024>; // [BK][BM]
var<workgroup> tile_b: array<f32, 1024>; // [BK][BN]

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let tid = lid.y * 16u + lid.x;
    let a_base = wid.z * p.stride_a;
    let b_base = wid.z * p.stride_b;
    let c_base = wid.z * p.stride_c;
    // Element strides of op(A)[m, k] and op(B)[k, n] in storage.
    let a_stride_m = select(p.k, 1u, TRANS_A);
    let a_stride_k = select(1u, p.m, TRANS_A);
    let b_stride_k = select(p.n, 1u, TRANS_B);
    let b_stride_n = select(1u, p.k, TRANS_B);

    // Four rows of four outputs, in registers (no dynamically indexed arrays:
    // some drivers, Mesa's GL among them, compile those very slowly).
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Stage the tiles; consecutive invocations read consecutive addresses,
        // whichever way each operand is stored (no branches: GL compilers choke on them).
        for (var i = 0u; i < 4u; i++) {
            let e = tid + i * 256u;
            let a_fast = select(e % BK, e % BM, TRANS_A);
            let a_slow = select(e / BK, e / BM, TRANS_A);
            let am = select(a_slow, a_fast, TRANS_A);
            let ak = select(a_fast, a_slow, TRANS_A);
            let gm = row0 + am;
            let gk = k0 + ak;
            var va = 0.0;
            if (gm < p.m && gk < p.k) {
                va = a[a_base + gm * a_stride_m + gk * a_stride_k];
            }
            tile_a[ak * BM + am] = va;

            let b_fast = select(e % BN, e % BK, TRANS_B);
            let b_slow = select(e / BN, e / BK, TRANS_B);
            let bn = select(b_fast, b_slow, TRANS_B);
            let bk = select(b_slow, b_fast, TRANS_B);
            let gn = col0 + bn;
            let gk2 = k0 + bk;
            var vb = 0.0;
            if (gn < p.n && gk2 < p.k) {
                vb = load_b(b_base + gk2 * b_stride_k + gn * b_stride_n);
            }
            tile_b[bk * BN + bn] = vb;
        }
        workgroupBarrier();

        for (var kk = 0u; kk < BK; kk++) {
            let ia = kk * BM + lid.y * 4u;
            let ib = kk * BN + lid.x * 4u;
            let rb = vec4<f32>(tile_b[ib], tile_b[ib + 1u], tile_b[ib + 2u], tile_b[ib + 3u]);
            acc0 = fma(vec4<f32>(tile_a[ia]), rb, acc0);
            acc1 = fma(vec4<f32>(tile_a[ia + 1u]), rb, acc1);
            acc2 = fma(vec4<f32>(tile_a[ia + 2u]), rb, acc2);
            acc3 = fma(vec4<f32>(tile_a[ia + 3u]), rb, acc3);
        }
        workgroupBarrier();
    }

    let r = row0 + lid.y * 4u;
    let col = col0 + lid.x * 4u;
    store_row(r, col, c_base, acc0);
    store_row(r + 1u, col, c_base, acc1);
    store_row(r + 2u, col, c_base, acc2);
    store_row(r + 3u, col, c_base, acc3);
}

// Writes up to four outputs of row r starting at column col: C = alpha*acc + beta*C.
fn store_row(r: u32, col: u32, c_base: u32, acc: vec4<f32>) {
    if (r >= p.m) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        if (col + j < p.n) {
            let idx = c_base + r * p.n + col + j;
            var v = p.alpha * acc[j];
            if (p.beta != 0.0) {
                v = v + p.beta * c[idx];
            }
            c[idx] = epilogue(v, col + j);
        }
    }
}
