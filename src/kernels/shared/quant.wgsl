// llama.cpp's block formats, decoded one element at a time: `dequant_<fmt>(i)`
// is element i of a row-major weight stored as whole blocks (blocks never
// span rows, so the flat index finds its block directly). The header supplies
// `q_word(word)`, that word of the weight's buffer, and `f16_to_f32`.
//
// Each decoder does ggml's `dequantize_row_*` arithmetic in the same order
// (products formed as ggml forms them), so its f32 result equals gguf-py's.
// Every 16-bit field of every format sits at an even byte offset, so a half
// never straddles two words.

fn q_byte(o: u32) -> u32 {
    return (q_word(o >> 2u) >> ((o & 3u) * 8u)) & 0xffu;
}

fn q_u16(o: u32) -> u32 {
    return (q_word(o >> 2u) >> ((o & 2u) * 8u)) & 0xffffu;
}

fn q_half(o: u32) -> f32 {
    return f16_to_f32(q_u16(o));
}

fn q_i8(b: u32) -> i32 {
    return bitcast<i32>(b << 24u) >> 24u;
}

// Value j of a 32-value block's 16 nibble bytes at `qs`: low nibbles hold
// values 0-15, high nibbles 16-31.
fn q_nibble32(qs: u32, j: u32) -> u32 {
    let b = q_byte(qs + (j & 15u));
    return select(b & 15u, b >> 4u, j >= 16u);
}

// Q4_0: d, 16 nibble bytes; (q - 8) * d.
fn dequant_q4_0(i: u32) -> f32 {
    let o = (i / 32u) * 18u;
    let q = q_nibble32(o + 2u, i % 32u);
    return f32(i32(q) - 8) * q_half(o);
}

// Q4_1: d, min, 16 nibble bytes; q * d + min.
fn dequant_q4_1(i: u32) -> f32 {
    let o = (i / 32u) * 20u;
    let q = q_nibble32(o + 4u, i % 32u);
    return f32(q) * q_half(o) + q_half(o + 2u);
}

// Q5_0: d, 32 high bits, 16 nibble bytes; (q - 16) * d.
fn dequant_q5_0(i: u32) -> f32 {
    let o = (i / 32u) * 22u;
    let j = i % 32u;
    let qh = q_u16(o + 2u) | (q_u16(o + 4u) << 16u);
    let q = q_nibble32(o + 6u, j) | (((qh >> j) & 1u) << 4u);
    return f32(i32(q) - 16) * q_half(o);
}

// Q5_1: d, min, 32 high bits, 16 nibble bytes; q * d + min.
fn dequant_q5_1(i: u32) -> f32 {
    let o = (i / 32u) * 24u;
    let j = i % 32u;
    let qh = q_word((o + 4u) >> 2u);
    let q = q_nibble32(o + 8u, j) | (((qh >> j) & 1u) << 4u);
    return f32(q) * q_half(o) + q_half(o + 2u);
}

// Q8_0: d, 32 signed bytes; d * q.
fn dequant_q8_0(i: u32) -> f32 {
    let o = (i / 32u) * 34u;
    return q_half(o) * f32(q_i8(q_byte(o + 2u + i % 32u)));
}

// K-quants: 256 values per block. Q2_K and Q3_K walk their 2-bit planes in
// chunks of 128 values (c), four shifts (s) and two halves of 16 (h).

// Q2_K: 16 scale bytes (4-bit scale, 4-bit min), 64 bytes of 2-bit values, d, dmin.
fn dequant_q2_k(i: u32) -> f32 {
    let o = (i / 256u) * 84u;
    let j = i % 256u;
    let c = j / 128u;
    let s = (j % 128u) / 32u;
    let h = (j % 32u) / 16u;
    let b = q_byte(o + 16u + 32u * c + 16u * h + j % 16u);
    let sc = q_byte(o + c * 8u + s * 2u + h);
    let dl = q_half(o + 80u) * f32(sc & 15u);
    let ml = q_half(o + 82u) * f32(sc >> 4u);
    return dl * f32((b >> (2u * s)) & 3u) - ml;
}

// Q3_K: 32 bytes of high bits (clear means -4), 64 bytes of 2-bit values,
// 12 bytes of 16 signed 6-bit scales, d.
fn dequant_q3_k(i: u32) -> f32 {
    let o = (i / 256u) * 110u;
    let j = i % 256u;
    let c = j / 128u;
    let s = (j % 128u) / 32u;
    let h = (j % 32u) / 16u;
    let l = 16u * h + j % 16u;
    let low = (q_byte(o + 32u + 32u * c + l) >> (2u * s)) & 3u;
    let high_set = (q_byte(o + l) & (1u << (c * 4u + s))) != 0u;
    let v = i32(low) - select(4, 0, high_set);
    let is = c * 8u + s * 2u + h;
    let packed = o + 96u;
    let low4 = select(q_byte(packed + is) & 15u, q_byte(packed + is - 8u) >> 4u, is >= 8u);
    let high2 = (q_byte(packed + 8u + is % 4u) >> (2u * (is / 4u))) & 3u;
    let scale = i32(low4 | (high2 << 4u)) - 32;
    let dl = q_half(o + 108u) * f32(scale);
    return dl * f32(v);
}

// The 6-bit scale and min of sub-block `sub` of Q4_K/Q5_K (ggml's
// get_scale_min_k4), from the 12 scale bytes at `sc`.
fn q_scale_min_k4(sc: u32, sub: u32) -> vec2<u32> {
    if (sub < 4u) {
        return vec2<u32>(q_byte(sc + sub) & 63u, q_byte(sc + sub + 4u) & 63u);
    }
    let lo = q_byte(sc + sub + 4u);
    return vec2<u32>(
        (lo & 15u) | ((q_byte(sc + sub - 4u) >> 6u) << 4u),
        (lo >> 4u) | ((q_byte(sc + sub) >> 6u) << 4u),
    );
}

// Q4_K: d, dmin, 12 scale bytes, 128 nibble bytes: 8 sub-blocks of 32, pairs
// of sub-blocks sharing 32 bytes (low nibbles, then high).
fn dequant_q4_k(i: u32) -> f32 {
    let o = (i / 256u) * 144u;
    let j = i % 256u;
    let pair = j / 64u;
    let upper = (j % 64u) >= 32u;
    let b = q_byte(o + 16u + 32u * pair + j % 32u);
    let q = select(b & 15u, b >> 4u, upper);
    let sm = q_scale_min_k4(o + 4u, 2u * pair + select(0u, 1u, upper));
    let d1 = q_half(o) * f32(sm.x);
    let m1 = q_half(o + 2u) * f32(sm.y);
    return d1 * f32(q) - m1;
}

// Q5_K: Q4_K's fields plus 32 bytes of fifth bits before the nibbles.
fn dequant_q5_k(i: u32) -> f32 {
    let o = (i / 256u) * 176u;
    let j = i % 256u;
    let pair = j / 64u;
    let sub = 2u * pair + select(0u, 1u, (j % 64u) >= 32u);
    let l = j % 32u;
    let b = q_byte(o + 48u + 32u * pair + l);
    let nibble = select(b & 15u, b >> 4u, (j % 64u) >= 32u);
    let high = select(0u, 16u, (q_byte(o + 16u + l) & (1u << sub)) != 0u);
    let sm = q_scale_min_k4(o + 4u, sub);
    let d1 = q_half(o) * f32(sm.x);
    let m1 = q_half(o + 2u) * f32(sm.y);
    return d1 * f32(nibble + high) - m1;
}

// Q6_K: 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 signed scales, d;
// two halves of 128 values, each four runs (k) of 32.
fn dequant_q6_k(i: u32) -> f32 {
    let o = (i / 256u) * 210u;
    let j = i % 256u;
    let n = j / 128u;
    let k = (j % 128u) / 32u;
    let l = j % 32u;
    let lb = q_byte(o + 64u * n + l + 32u * (k & 1u));
    let nibble = select(lb & 15u, lb >> 4u, k >= 2u);
    let high = (q_byte(o + 128u + 32u * n + l) >> (2u * k)) & 3u;
    let q = i32(nibble | (high << 4u)) - 32;
    let s = q_i8(q_byte(o + 192u + 8u * n + l / 16u + 2u * k));
    return q_half(o + 208u) * f32(s) * f32(q);
}
