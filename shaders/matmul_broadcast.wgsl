// C[b] = alpha * op(A[b]) * op(B[b]) + beta * C[b], for CPU-emulated devices
// (lavapipe, llvmpipe, WARP, SwiftShader). Same operands, parameters and
// epilogue as matmul.wgsl; the header also supplies `load_b_pair`.
//
// Why a second kernel: a software device runs each workgroup as a loop over
// SIMD batches of invocations, so workgroup memory and barriers buy nothing
// and every load costs more than an FMA. Here each invocation owns 8 rows x 8
// consecutive columns of C, held in registers: 64 FMAs per 16 loads (8 when
// B is 16-bit: one u32 word holds two neighbours), no workgroup memory.
// The header sets the group's shape, LANES_X x LANES_Y invocations. A wide
// group (16 x 1) shares its rows, so the 8 A values per k depend only on the
// workgroup: the compiler loads each once and broadcasts it. A tall group
// (1 x 16), for narrow outputs such as rank-r products, shares its columns
// and broadcasts the B values instead.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    stride_a: u32,
    stride_b: u32,
    stride_c: u32,
    alpha: f32,
    beta: f32,
    has_bias: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<BWord>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

// 16 invocations: a wide group's 128 columns waste at most 10% on the
// transformer widths we see (576 = 4.5 x 128) and divide most others.
const LANES: u32 = LANES_X * LANES_Y;

// Rows k and k+1 of op(B), 8 columns each.
struct BPair {
    k0_lo: vec4<f32>,
    k0_hi: vec4<f32>,
    k1_lo: vec4<f32>,
    k1_hi: vec4<f32>,
}

// One row of this invocation's outputs: 8 columns.
struct Row {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

fn step2(acc: Row, x0: f32, x1: f32, t: BPair) -> Row {
    var r = acc;
    r.lo = fma(vec4<f32>(x0), t.k0_lo, r.lo);
    r.hi = fma(vec4<f32>(x0), t.k0_hi, r.hi);
    r.lo = fma(vec4<f32>(x1), t.k1_lo, r.lo);
    r.hi = fma(vec4<f32>(x1), t.k1_hi, r.hi);
    return r;
}

fn step1(acc: Row, x: f32, lo: vec4<f32>, hi: vec4<f32>) -> Row {
    return Row(fma(vec4<f32>(x), lo, acc.lo), fma(vec4<f32>(x), hi, acc.hi));
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

    var r0 = Row(vec4<f32>(0.0), vec4<f32>(0.0));
    var r1 = r0;
    var r2 = r0;
    var r3 = r0;
    var r4 = r0;
    var r5 = r0;
    var r6 = r0;
    var r7 = r0;
    // Two k per iteration, so a 16-bit B is read a whole word at a time.
    var k = 0u;
    for (; k + 1u < p.k; k += 2u) {
        let t = load_b_pair(cb + k * b_stride_k, b_stride_k, b_stride_n);
        let k0 = k * a_stride_k;
        let k1 = k0 + a_stride_k;
        r0 = step2(r0, a[ra0 + k0], a[ra0 + k1], t);
        r1 = step2(r1, a[ra1 + k0], a[ra1 + k1], t);
        r2 = step2(r2, a[ra2 + k0], a[ra2 + k1], t);
        r3 = step2(r3, a[ra3 + k0], a[ra3 + k1], t);
        r4 = step2(r4, a[ra4 + k0], a[ra4 + k1], t);
        r5 = step2(r5, a[ra5 + k0], a[ra5 + k1], t);
        r6 = step2(r6, a[ra6 + k0], a[ra6 + k1], t);
        r7 = step2(r7, a[ra7 + k0], a[ra7 + k1], t);
    }
    if (k < p.k) {
        // Odd K: the last row of op(B), one element at a time.
        let bi = cb + k * b_stride_k;
        let s = b_stride_n;
        let lo = vec4<f32>(load_b(bi), load_b(bi + s), load_b(bi + 2u * s), load_b(bi + 3u * s));
        let hi = vec4<f32>(load_b(bi + 4u * s), load_b(bi + 5u * s), load_b(bi + 6u * s), load_b(bi + 7u * s));
        let ka = k * a_stride_k;
        r0 = step1(r0, a[ra0 + ka], lo, hi);
        r1 = step1(r1, a[ra1 + ka], lo, hi);
        r2 = step1(r2, a[ra2 + ka], lo, hi);
        r3 = step1(r3, a[ra3 + ka], lo, hi);
        r4 = step1(r4, a[ra4 + ka], lo, hi);
        r5 = step1(r5, a[ra5 + ka], lo, hi);
        r6 = step1(r6, a[ra6 + ka], lo, hi);
        r7 = step1(r7, a[ra7 + ka], lo, hi);
    }

    if (owned >= p.n) {
        return;
    }
    let c_base = wid.z * p.stride_c;
    let first = owned - col;
    store_row(row0, col, first, c_base, r0);
    store_row(row0 + 1u, col, first, c_base, r1);
    store_row(row0 + 2u, col, first, c_base, r2);
    store_row(row0 + 3u, col, first, c_base, r3);
    store_row(row0 + 4u, col, first, c_base, r4);
    store_row(row0 + 5u, col, first, c_base, r5);
    store_row(row0 + 6u, col, first, c_base, r6);
    store_row(row0 + 7u, col, first, c_base, r7);
}

// Writes columns col+first .. col+7 of row r: C = epilogue(alpha*acc + beta*C).
// Unrolled: indexing a vector with a loop variable is slow on SIMD devices.
fn store_row(r: u32, col: u32, first: u32, c_base: u32, acc: Row) {
    if (r >= p.m) {
        return;
    }
    let row = c_base + r * p.n + col;
    store(row, col, 0u, first, acc.lo.x);
    store(row, col, 1u, first, acc.lo.y);
    store(row, col, 2u, first, acc.lo.z);
    store(row, col, 3u, first, acc.lo.w);
    store(row, col, 4u, first, acc.hi.x);
    store(row, col, 5u, first, acc.hi.y);
    store(row, col, 6u, first, acc.hi.z);
    store(row, col, 7u, first, acc.hi.w);
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
