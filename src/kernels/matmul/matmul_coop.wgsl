// C[b] = alpha * op(A[b]) * op(B[b]) + beta * C[b] on cooperative matrices
// (tensor cores, simdgroup matrices): f16 operands, f32 accumulators.
// Same operands, transposes, B types and epilogue as matmul_tiled.wgsl; the
// generated header adds `enable f16; enable wgpu_cooperative_matrix;`,
// T (the hardware tile: 8 or 16), LANES (the subgroup size) and the
// TileA/TileB/TileC aliases of coop_mat{T}x{T}.
//
// One subgroup computes a (4T)x(4T) block of C as 4x4 accumulator tiles.
// Each K-slice of 2T is staged in workgroup memory as f16, row-major (A
// block [4T][2T], B block [2T][4T]), which is where any transpose, 16-bit
// or quantized B (`load_b`) and partial tile (zeros) are dealt with, so
// the cooperative loads always see dense row-major tiles. Results leave
// through a row of f32 tiles in workgroup memory, where alpha, beta·C, the
// epilogue and the edges of C are applied per element.
//
// Values are rounded to f16 while staging (clamped to f16's range first,
// so a large activation saturates rather than becoming infinite): this
// path is opt-in (`GpuOptions::cooperative_matrix`) and is only used after
// a self-test against the f32 kernels on the same device.
//
// Every invocation runs every cooperative operation (uniform control
// flow); should the driver split the workgroup into more than one subgroup,
// each computes the same block and the results are unchanged.

const BM: u32 = 4u * T;
const BN: u32 = 4u * T;
const BK: u32 = 2u * T;
const F16_MAX: f32 = 65504.0;

var<workgroup> stage_a: array<f16, BM * BK>; // [BM][BK]
var<workgroup> stage_b: array<f16, BK * BN>; // [BK][BN]
var<workgroup> stage_c: array<f32, T * BN>;  // one row of accumulator tiles, [T][BN]

fn to_f16(x: f32) -> f16 {
    return f16(clamp(x, -F16_MAX, F16_MAX));
}

@compute @workgroup_size(LANES, 1, 1)
fn main(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let a_base = wid.z * p.stride_a;
    let b_base = wid.z * p.stride_b;
    let c_base = wid.z * p.stride_c;
    // Element strides of op(A)[m, k] and op(B)[k, n] in storage.
    let a_stride_m = select(p.k, 1u, TRANS_A);
    let a_stride_k = select(1u, p.m, TRANS_A);
    let b_stride_k = select(p.n, 1u, TRANS_B);
    let b_stride_n = select(1u, p.k, TRANS_B);

    var c00 = TileC(); var c01 = TileC(); var c02 = TileC(); var c03 = TileC();
    var c10 = TileC(); var c11 = TileC(); var c12 = TileC(); var c13 = TileC();
    var c20 = TileC(); var c21 = TileC(); var c22 = TileC(); var c23 = TileC();
    var c30 = TileC(); var c31 = TileC(); var c32 = TileC(); var c33 = TileC();

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        for (var e = lane; e < BM * BK; e += LANES) {
            let am = e / BK;
            let ak = e % BK;
            let gm = row0 + am;
            let gk = k0 + ak;
            var v = 0.0;
            if (gm < p.m && gk < p.k) {
                v = a[a_base + gm * a_stride_m + gk * a_stride_k];
            }
            stage_a[e] = to_f16(v);
        }
        for (var e = lane; e < BK * BN; e += LANES) {
            let bk = e / BN;
            let bn = e % BN;
            let gk = k0 + bk;
            let gn = col0 + bn;
            var v = 0.0;
            if (gn < p.n && gk < p.k) {
                v = load_b(b_base + gk * b_stride_k + gn * b_stride_n);
            }
            stage_b[e] = to_f16(v);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk += T) {
            let a0 = coopLoadT<TileA>(&stage_a[0u * T * BK + kk], BK);
            let a1 = coopLoadT<TileA>(&stage_a[1u * T * BK + kk], BK);
            let a2 = coopLoadT<TileA>(&stage_a[2u * T * BK + kk], BK);
            let a3 = coopLoadT<TileA>(&stage_a[3u * T * BK + kk], BK);
            let b0 = coopLoadT<TileB>(&stage_b[kk * BN + 0u * T], BN);
            let b1 = coopLoadT<TileB>(&stage_b[kk * BN + 1u * T], BN);
            let b2 = coopLoadT<TileB>(&stage_b[kk * BN + 2u * T], BN);
            let b3 = coopLoadT<TileB>(&stage_b[kk * BN + 3u * T], BN);
            c00 = coopMultiplyAdd(a0, b0, c00); c01 = coopMultiplyAdd(a0, b1, c01);
            c02 = coopMultiplyAdd(a0, b2, c02); c03 = coopMultiplyAdd(a0, b3, c03);
            c10 = coopMultiplyAdd(a1, b0, c10); c11 = coopMultiplyAdd(a1, b1, c11);
            c12 = coopMultiplyAdd(a1, b2, c12); c13 = coopMultiplyAdd(a1, b3, c13);
            c20 = coopMultiplyAdd(a2, b0, c20); c21 = coopMultiplyAdd(a2, b1, c21);
            c22 = coopMultiplyAdd(a2, b2, c22); c23 = coopMultiplyAdd(a2, b3, c23);
            c30 = coopMultiplyAdd(a3, b0, c30); c31 = coopMultiplyAdd(a3, b1, c31);
            c32 = coopMultiplyAdd(a3, b2, c32); c33 = coopMultiplyAdd(a3, b3, c33);
        }
        workgroupBarrier();
    }

    // One row of tiles at a time through stage_c, then out per element.
    coopStoreT(c00, &stage_c[0u * T], BN); coopStoreT(c01, &stage_c[1u * T], BN);
    coopStoreT(c02, &stage_c[2u * T], BN); coopStoreT(c03, &stage_c[3u * T], BN);
    write_tile_row(0u, row0, col0, c_base, lane);
    coopStoreT(c10, &stage_c[0u * T], BN); coopStoreT(c11, &stage_c[1u * T], BN);
    coopStoreT(c12, &stage_c[2u * T], BN); coopStoreT(c13, &stage_c[3u * T], BN);
    write_tile_row(1u, row0, col0, c_base, lane);
    coopStoreT(c20, &stage_c[0u * T], BN); coopStoreT(c21, &stage_c[1u * T], BN);
    coopStoreT(c22, &stage_c[2u * T], BN); coopStoreT(c23, &stage_c[3u * T], BN);
    write_tile_row(2u, row0, col0, c_base, lane);
    coopStoreT(c30, &stage_c[0u * T], BN); coopStoreT(c31, &stage_c[1u * T], BN);
    coopStoreT(c32, &stage_c[2u * T], BN); coopStoreT(c33, &stage_c[3u * T], BN);
    write_tile_row(3u, row0, col0, c_base, lane);
}

// Writes the T rows of tile row `tile` staged in stage_c: C = epilogue(alpha*acc + beta*C).
fn write_tile_row(tile: u32, row0: u32, col0: u32, c_base: u32, lane: u32) {
    workgroupBarrier();
    for (var e = lane; e < T * BN; e += LANES) {
        let r = row0 + tile * T + e / BN;
        let col = col0 + e % BN;
        if (r < p.m && col < p.n) {
            let idx = c_base + r * p.n + col;
            var v = p.alpha * stage_c[e];
            if (p.beta != 0.0) {
                v = v + p.beta * c[idx];
            }
            c[idx] = epilogue(v, col);
        }
    }
    workgroupBarrier();
}
