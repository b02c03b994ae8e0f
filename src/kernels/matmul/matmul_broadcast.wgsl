// C[b] = alpha * op(A[b]) * op(B[b]) + beta * C[b], for CPU-emulated devices
// (lavapipe, llvmpipe, WARP, SwiftShader). Same operands and parameters
// (matmul_io.wgsl) and epilogue as matmul_tiled.wgsl; the header also supplies
// `load_b_pair`.
//
// Why a second kernel: a software device runs each workgroup as a loop over
// SIMD batches of invocations, so workgroup memory and barriers buy nothing
// and every load costs more than an FMA: lavapipe fetches a value that differs
// across invocations with one scalar load per invocation, whatever its width.
// Here each invocation owns 8 rows x 8 consecutive columns of C, held in
// registers, with no workgroup memory: per two k, 128 FMAs for 16 B values.
// The header's `load_b_pair` fetches those in as few loads as the layout
// allows: 4 vec4 words (f32, B not transposed), 8 vec2 (f32 transposed), 8
// u32 words of 16-bit pairs, or 2 vec4<u32> of them; else 16 scalars.
//
// The header sets the group's shape, LANES_X x LANES_Y invocations. A wide
// group (LANES_X x 1) shares its rows, so the 8 A values per k depend only
// on the workgroup: the compiler loads each once and broadcasts it. A tall
// group (1 x LANES_Y), for narrow outputs such as rank-r products, shares its
// columns and broadcasts the B values instead.

// One SIMD batch of the device (8 or 16 invocations), set by the header.
const LANES: u32 = LANES_X * LANES_Y;

// Rows k and k+1 of op(B), 8 columns each.
struct BPair {
    k0_lo: vec4<f32>,
    k0_hi: vec4<f32>,
    k1_lo: vec4<f32>,
    k1_hi: vec4<f32>,
}

@compute @workgroup_size(LANES)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    // Element strides of op(A)[m, k] and op(B)[k, n] in storage.
    let a_stride_m = select(p.k, 1u, TRANS_A);
    let a_stride_k = select(1u, p.m, TRANS_A);
    let b_stride_k = select(p.n, 1u, TRANS_B);
    let b_stride_n = select(1u, p.k, TRANS_B);

    // The last group's columns are clamped so every load stays in bounds (the
    // dispatcher guarantees n >= 8); `owned` keeps neighbours from writing twice.
    // Spelled so a 1-lane dimension is a constant 0 and its index stays uniform.
    let lane_x = select(lid % LANES_X, 0u, LANES_X == 1u);
    let lane_y = select(lid / LANES_X, 0u, LANES_Y == 1u);
    let owned = (wid.x * LANES_X + lane_x) * 8u;
    let col = min(owned, p.n - 8u);
    let row0 = (wid.y * LANES_Y + lane_y) * 8u;
    let last = p.m - 1u;
    let a_base = wid.z * p.stride_a;
    let ra0 = a_base + min(row0, last) * a_stride_m;
    let ra1 = a_base + min(row0 + 1u, last) * a_stride_m;
    let ra2 = a_base + min(row0 + 2u, last) * a_stride_m;
    let ra3 = a_base + min(row0 + 3u, last) * a_stride_m;
    let ra4 = a_base + min(row0 + 4u, last) * a_stride_m;
    let ra5 = a_base + min(row0 + 5u, last) * a_stride_m;
    let ra6 = a_base + min(row0 + 6u, last) * a_stride_m;
    let ra7 = a_base + min(row0 + 7u, last) * a_stride_m;
    let cb = wid.z * p.stride_b + col * b_stride_n;

    // Row r's 8 outputs are lo_r (columns 0-3) and hi_r (4-7). Plain variables,
    // not structs or arrays: they stay in registers on every compiler.
    var lo0 = vec4<f32>(0.0);
    var hi0 = lo0;
    var lo1 = lo0;
    var hi1 = lo0;
    var lo2 = lo0;
    var hi2 = lo0;
    var lo3 = lo0;
    var hi3 = lo0;
    var lo4 = lo0;
    var hi4 = lo0;
    var lo5 = lo0;
    var hi5 = lo0;
    var lo6 = lo0;
    var hi6 = lo0;
    var lo7 = lo0;
    var hi7 = lo0;
    // Two k per iteration, so a 16-bit B is read a whole word at a time. With
    // odd K the last step reads row K-1 of op(B) twice and zeroes its second
    // A values: cheaper than a tail loop, which slows the main one on lavapipe.
    for (var k = 0u; k < p.k; k += 2u) {
        let second = k + 1u < p.k;
        let k1 = select(k, k + 1u, second);
        let t = load_b_pair(cb + k * b_stride_k, (k1 - k) * b_stride_k, b_stride_n);
        let a0 = k * a_stride_k;
        let a1 = k1 * a_stride_k;
        // Row by row, both k: this order runs ~15% faster on lavapipe than k by k.
        let x0 = vec4<f32>(a[ra0 + a0]);
        lo0 = fma(x0, t.k0_lo, lo0);
        hi0 = fma(x0, t.k0_hi, hi0);
        let y0 = vec4<f32>(select(0.0, a[ra0 + a1], second));
        lo0 = fma(y0, t.k1_lo, lo0);
        hi0 = fma(y0, t.k1_hi, hi0);
        let x1 = vec4<f32>(a[ra1 + a0]);
        lo1 = fma(x1, t.k0_lo, lo1);
        hi1 = fma(x1, t.k0_hi, hi1);
        let y1 = vec4<f32>(select(0.0, a[ra1 + a1], second));
        lo1 = fma(y1, t.k1_lo, lo1);
        hi1 = fma(y1, t.k1_hi, hi1);
        let x2 = vec4<f32>(a[ra2 + a0]);
        lo2 = fma(x2, t.k0_lo, lo2);
        hi2 = fma(x2, t.k0_hi, hi2);
        let y2 = vec4<f32>(select(0.0, a[ra2 + a1], second));
        lo2 = fma(y2, t.k1_lo, lo2);
        hi2 = fma(y2, t.k1_hi, hi2);
        let x3 = vec4<f32>(a[ra3 + a0]);
        lo3 = fma(x3, t.k0_lo, lo3);
        hi3 = fma(x3, t.k0_hi, hi3);
        let y3 = vec4<f32>(select(0.0, a[ra3 + a1], second));
        lo3 = fma(y3, t.k1_lo, lo3);
        hi3 = fma(y3, t.k1_hi, hi3);
        let x4 = vec4<f32>(a[ra4 + a0]);
        lo4 = fma(x4, t.k0_lo, lo4);
        hi4 = fma(x4, t.k0_hi, hi4);
        let y4 = vec4<f32>(select(0.0, a[ra4 + a1], second));
        lo4 = fma(y4, t.k1_lo, lo4);
        hi4 = fma(y4, t.k1_hi, hi4);
        let x5 = vec4<f32>(a[ra5 + a0]);
        lo5 = fma(x5, t.k0_lo, lo5);
        hi5 = fma(x5, t.k0_hi, hi5);
        let y5 = vec4<f32>(select(0.0, a[ra5 + a1], second));
        lo5 = fma(y5, t.k1_lo, lo5);
        hi5 = fma(y5, t.k1_hi, hi5);
        let x6 = vec4<f32>(a[ra6 + a0]);
        lo6 = fma(x6, t.k0_lo, lo6);
        hi6 = fma(x6, t.k0_hi, hi6);
        let y6 = vec4<f32>(select(0.0, a[ra6 + a1], second));
        lo6 = fma(y6, t.k1_lo, lo6);
        hi6 = fma(y6, t.k1_hi, hi6);
        let x7 = vec4<f32>(a[ra7 + a0]);
        lo7 = fma(x7, t.k0_lo, lo7);
        hi7 = fma(x7, t.k0_hi, hi7);
        let y7 = vec4<f32>(select(0.0, a[ra7 + a1], second));
        lo7 = fma(y7, t.k1_lo, lo7);
        hi7 = fma(y7, t.k1_hi, hi7);
    }

    if (owned >= p.n) {
        return;
    }
    let c_base = wid.z * p.stride_c;
    let first = owned - col;
    store_row(row0, col, first, c_base, lo0, hi0);
    store_row(row0 + 1u, col, first, c_base, lo1, hi1);
    store_row(row0 + 2u, col, first, c_base, lo2, hi2);
    store_row(row0 + 3u, col, first, c_base, lo3, hi3);
    store_row(row0 + 4u, col, first, c_base, lo4, hi4);
    store_row(row0 + 5u, col, first, c_base, lo5, hi5);
    store_row(row0 + 6u, col, first, c_base, lo6, hi6);
    store_row(row0 + 7u, col, first, c_base, lo7, hi7);
}

// Writes columns col+first .. col+7 of row r: C = epilogue(alpha*acc + beta*C).
// Unrolled: indexing a vector with a loop variable is slow on SIMD devices.
fn store_row(r: u32, col: u32, first: u32, c_base: u32, lo: vec4<f32>, hi: vec4<f32>) {
    if (r >= p.m) {
        return;
    }
    let row = c_base + r * p.n + col;
    store(row, col, 0u, first, lo.x);
    store(row, col, 1u, first, lo.y);
    store(row, col, 2u, first, lo.z);
    store(row, col, 3u, first, lo.w);
    store(row, col, 4u, first, hi.x);
    store(row, col, 5u, first, hi.y);
    store(row, col, 6u, first, hi.z);
    store(row, col, 7u, first, hi.w);
}

fn store(row: u32, col: u32, j: u32, first: u32, acc: f32) {
    if (j < first) {
        return;
    }
    var v = p.alpha * acc;
    if (p.beta != 0.0) {
        v = v + p.beta * c[row + j];
    }
    c[row + j] = epilogue(v, col + j);
}
