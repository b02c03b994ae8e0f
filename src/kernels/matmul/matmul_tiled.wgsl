// C[b] = alpha * op(A[b]) * op(B[b]) + beta * C[b]: the workgroup-tiled
// family real GPUs run. op(A) is M x K (A stored [K, M] when TRANS_A), op(B)
// is K x N (B stored [N, K] when TRANS_B: the Hugging Face [out, in] weight).
// The parameters `p` and operands `a`, `b`, `c` are declared in
// matmul_io.wgsl; the generated header (src/kernels/matmul/tiles.rs) gives
// the tile (BM x BN outputs per workgroup, RM x RN blocks of 4 x 4 outputs
// per invocation), whether each operand is read four elements at a time
// (VEC_A, VEC_B: its contiguous dimension is a multiple of 4; B_ONE: B one
// element at a time, for quantized blocks), and the
// loaders `load_a`, `load_a4`, `load_b`, `load_b4` (16-bit and quantized B
// decoded there), and `epilogue` (column scale and bias, or nothing).
//
// Every tile computes each output as the same chain of fma over k = 0, 1, ..
// in order, from 0.0, with the same BK (no split-K, zero padding only past K
// and identical for every tile): all tiles and both load paths give
// bit-identical results, so tuning the tile never changes a number.
//
// Workgroup memory holds a BK-deep slice of op(A) transposed ([k][m]) and of
// op(B) ([k][n]) as vec4s, so the inner loop reads vec4s of both. It is not
// zero-filled: every element of both tiles is written before the barrier.
// Accumulators are mat4x4 variables, not arrays (no dynamically indexed local
// arrays: Mesa's GL compiles them very slowly).

const BK: u32 = 16u;
const WX: u32 = BN / (4u * RN); // invocations along n
const WY: u32 = BM / (4u * RM); // invocations along m
const THREADS: u32 = WX * WY;
const BM4: u32 = BM / 4u;
const BN4: u32 = BN / 4u;

var<workgroup> tile_a: array<vec4<f32>, BK * BM4>; // [k][m / 4]
var<workgroup> tile_b: array<vec4<f32>, BK * BN4>; // [k][n / 4]

// acc + a ⊗ b: row r of the result is acc[r] + a[r] * b.
fn outer(acc: mat4x4<f32>, a: vec4<f32>, b: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(
        fma(vec4<f32>(a.x), b, acc[0]),
        fma(vec4<f32>(a.y), b, acc[1]),
        fma(vec4<f32>(a.z), b, acc[2]),
        fma(vec4<f32>(a.w), b, acc[3]),
    );
}

// op(A)[m, k] at element offset `base`, 0 outside the matrix.
fn a_at(base: u32, m: u32, k: u32) -> f32 {
    if (m < p.m && k < p.k) {
        return load_a(base + select(m * p.k + k, k * p.m + m, TRANS_A));
    }
    return 0.0;
}

// op(B)[k, n] at element offset `base`, 0 outside the matrix.
fn b_at(base: u32, k: u32, n: u32) -> f32 {
    if (k < p.k && n < p.n) {
        return load_b(base + select(k * p.n + n, n * p.k + k, TRANS_B));
    }
    return 0.0;
}

// Stages op(A)[row0.., k0..] into tile_a.
fn stage_a(tid: u32, base: u32, row0: u32, k0: u32) {
    if (TRANS_A) {
        // Stored [K, M]: four consecutive m of one k per unit, consecutive
        // invocations on consecutive m.
        for (var u = tid; u < BK * BM4; u += THREADS) {
            let kk = u / BM4;
            let m = row0 + (u % BM4) * 4u;
            let k = k0 + kk;
            var v = vec4<f32>(0.0);
            if (VEC_A) {
                // M % 4 == 0: the four are in or out together.
                if (m < p.m && k < p.k) {
                    v = load_a4(base + k * p.m + m);
                }
            } else {
                v = vec4<f32>(a_at(base, m, k), a_at(base, m + 1u, k), a_at(base, m + 2u, k), a_at(base, m + 3u, k));
            }
            tile_a[u] = v;
        }
    } else if (VEC_A) {
        // Stored [M, K], K % 4 == 0: a 4 x 4 block per unit, four rows of
        // four k read as vec4s and transposed into four m-vectors.
        for (var u = tid; u < (BK / 4u) * BM4; u += THREADS) {
            let kq = u % (BK / 4u);
            let mq = u / (BK / 4u);
            let m = row0 + mq * 4u;
            let k = k0 + kq * 4u;
            var r0 = vec4<f32>(0.0);
            var r1 = vec4<f32>(0.0);
            var r2 = vec4<f32>(0.0);
            var r3 = vec4<f32>(0.0);
            if (k < p.k) {
                if (m < p.m) { r0 = load_a4(base + m * p.k + k); }
                if (m + 1u < p.m) { r1 = load_a4(base + (m + 1u) * p.k + k); }
                if (m + 2u < p.m) { r2 = load_a4(base + (m + 2u) * p.k + k); }
                if (m + 3u < p.m) { r3 = load_a4(base + (m + 3u) * p.k + k); }
            }
            let t = transpose(mat4x4<f32>(r0, r1, r2, r3));
            let i = kq * 4u * BM4 + mq;
            tile_a[i] = t[0];
            tile_a[i + BM4] = t[1];
            tile_a[i + 2u * BM4] = t[2];
            tile_a[i + 3u * BM4] = t[3];
        }
    } else {
        // Stored [M, K]: four rows of one k per unit, consecutive
        // invocations on consecutive k.
        for (var u = tid; u < BK * BM4; u += THREADS) {
            let kk = u % BK;
            let mq = u / BK;
            let m = row0 + mq * 4u;
            let k = k0 + kk;
            tile_a[kk * BM4 + mq] = vec4<f32>(a_at(base, m, k), a_at(base, m + 1u, k), a_at(base, m + 2u, k), a_at(base, m + 3u, k));
        }
    }
}

// Stages op(B)[k0.., col0..] into tile_b.
fn stage_b(tid: u32, base: u32, col0: u32, k0: u32) {
    if (B_ONE) {
        // One element per unit, consecutive invocations along B's rows: a
        // quantized B's decoder is large, and this inlines it once.
        for (var u = tid; u < BK * BN; u += THREADS) {
            let kk = select(u / BN, u % BK, TRANS_B);
            let nn = select(u % BN, u / BK, TRANS_B);
            tile_b[kk * BN4 + nn / 4u][nn % 4u] = b_at(base, k0 + kk, col0 + nn);
        }
    } else if (!TRANS_B) {
        // Stored [K, N]: four consecutive n of one k per unit.
        for (var u = tid; u < BK * BN4; u += THREADS) {
            let kk = u / BN4;
            let n = col0 + (u % BN4) * 4u;
            let k = k0 + kk;
            var v = vec4<f32>(0.0);
            if (VEC_B) {
                // N % 4 == 0: the four are in or out together.
                if (n < p.n && k < p.k) {
                    v = load_b4(base + k * p.n + n);
                }
            } else {
                v = vec4<f32>(b_at(base, k, n), b_at(base, k, n + 1u), b_at(base, k, n + 2u), b_at(base, k, n + 3u));
            }
            tile_b[u] = v;
        }
    } else if (VEC_B) {
        // Stored [N, K], K % 4 == 0: a 4 x 4 block per unit, transposed.
        for (var u = tid; u < (BK / 4u) * BN4; u += THREADS) {
            let kq = u % (BK / 4u);
            let nq = u / (BK / 4u);
            let n = col0 + nq * 4u;
            let k = k0 + kq * 4u;
            var r0 = vec4<f32>(0.0);
            var r1 = vec4<f32>(0.0);
            var r2 = vec4<f32>(0.0);
            var r3 = vec4<f32>(0.0);
            if (k < p.k) {
                if (n < p.n) { r0 = load_b4(base + n * p.k + k); }
                if (n + 1u < p.n) { r1 = load_b4(base + (n + 1u) * p.k + k); }
                if (n + 2u < p.n) { r2 = load_b4(base + (n + 2u) * p.k + k); }
                if (n + 3u < p.n) { r3 = load_b4(base + (n + 3u) * p.k + k); }
            }
            let t = transpose(mat4x4<f32>(r0, r1, r2, r3));
            let i = kq * 4u * BN4 + nq;
            tile_b[i] = t[0];
            tile_b[i + BN4] = t[1];
            tile_b[i + 2u * BN4] = t[2];
            tile_b[i + 3u * BN4] = t[3];
        }
    } else {
        // Stored [N, K]: four columns of one k per unit, consecutive
        // invocations on consecutive k.
        for (var u = tid; u < BK * BN4; u += THREADS) {
            let kk = u % BK;
            let nq = u / BK;
            let n = col0 + nq * 4u;
            let k = k0 + kk;
            tile_b[kk * BN4 + nq] = vec4<f32>(b_at(base, k, n), b_at(base, k, n + 1u), b_at(base, k, n + 2u), b_at(base, k, n + 3u));
        }
    }
}

@compute @workgroup_size(WX, WY, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let tid = lid.y * WX + lid.x;
    let a_base = wid.z * p.stride_a;
    let b_base = wid.z * p.stride_b;
    let c_base = wid.z * p.stride_c;

    // Block (i, j) holds rows row0 + i*BM/RM + 4*lid.y .. +4 and columns
    // col0 + j*BN/RN + 4*lid.x .. +4: neighbouring invocations read
    // neighbouring vec4s of the tiles.
    var acc00 = mat4x4<f32>();
    var acc01 = mat4x4<f32>();
    var acc10 = mat4x4<f32>();
    var acc11 = mat4x4<f32>();

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        stage_a(tid, a_base, row0, k0);
        stage_b(tid, b_base, col0, k0);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a0 = tile_a[kk * BM4 + lid.y];
            let b0 = tile_b[kk * BN4 + lid.x];
            acc00 = outer(acc00, a0, b0);
            if (RN == 2u) {
                let b1 = tile_b[kk * BN4 + WX + lid.x];
                acc01 = outer(acc01, a0, b1);
                if (RM == 2u) {
                    let a1 = tile_a[kk * BM4 + WY + lid.y];
                    acc10 = outer(acc10, a1, b0);
                    acc11 = outer(acc11, a1, b1);
                }
            } else if (RM == 2u) {
                let a1 = tile_a[kk * BM4 + WY + lid.y];
                acc10 = outer(acc10, a1, b0);
            }
        }
        workgroupBarrier();
    }

    let r0 = row0 + lid.y * 4u;
    let c0 = col0 + lid.x * 4u;
    store_block(r0, c0, c_base, acc00);
    if (RN == 2u) {
        store_block(r0, c0 + 4u * WX, c_base, acc01);
    }
    if (RM == 2u) {
        store_block(r0 + 4u * WY, c0, c_base, acc10);
        if (RN == 2u) {
            store_block(r0 + 4u * WY, c0 + 4u * WX, c_base, acc11);
        }
    }
}

// Writes the 4 x 4 outputs from (r, col) that lie inside C.
fn store_block(r: u32, col: u32, c_base: u32, acc: mat4x4<f32>) {
    store_row(r, col, c_base, acc[0]);
    store_row(r + 1u, col, c_base, acc[1]);
    store_row(r + 2u, col, c_base, acc[2]);
    store_row(r + 3u, col, c_base, acc[3]);
}

// Writes up to four outputs of row r starting at column col:
// C = epilogue(alpha*acc + beta*C).
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
