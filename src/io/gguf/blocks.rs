//! llama.cpp's tensor formats and their CPU decoders: the reference the GPU
//! decoders are checked against. Each quantized format stores fixed-size
//! blocks of consecutive values along a row; the arithmetic below follows
//! ggml's `dequantize_row_*` operation for operation (same products in the
//! same order, no fused multiply-add), so results equal gguf-py's bit for bit.

use half::f16;

use crate::tensor::{DType, Quant};

/// A GGUF tensor type that dora-wgpu reads, with its ggml type id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl GgmlType {
    pub const ALL: [GgmlType; 13] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];

    /// The type for a ggml type id (`ggml_type` in ggml.h), if it is one read here.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::BF16 => 30,
        }
    }

    /// The name llama.cpp and gguf-py use (`Q4_K`, `BF16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2_K => "Q2_K",
            GgmlType::Q3_K => "Q3_K",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
        }
    }

    /// Values per block and bytes per block (`GGML_QUANT_SIZES`).
    pub fn block(self) -> (usize, usize) {
        match self.dtype() {
            DType::Quant(q) => q.block(),
            dense => (1, dense.file_bytes(1)),
        }
    }

    /// Bytes of `n` values, or None when `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        let (values, bytes) = self.block();
        n.is_multiple_of(values).then(|| n / values * bytes)
    }
}

impl From<Quant> for GgmlType {
    fn from(q: Quant) -> GgmlType {
        match q {
            Quant::Q4_0 => GgmlType::Q4_0,
            Quant::Q4_1 => GgmlType::Q4_1,
            Quant::Q5_0 => GgmlType::Q5_0,
            Quant::Q5_1 => GgmlType::Q5_1,
            Quant::Q8_0 => GgmlType::Q8_0,
            Quant::Q2_K => GgmlType::Q2_K,
            Quant::Q3_K => GgmlType::Q3_K,
            Quant::Q4_K => GgmlType::Q4_K,
            Quant::Q5_K => GgmlType::Q5_K,
            Quant::Q6_K => GgmlType::Q6_K,
        }
    }
}

impl GgmlType {
    /// The GPU dtype a tensor of this type is uploaded as, unconverted.
    pub fn dtype(self) -> DType {
        match self {
            GgmlType::F32 => DType::F32,
            GgmlType::F16 => DType::F16,
            GgmlType::BF16 => DType::BF16,
            GgmlType::Q4_0 => DType::Quant(Quant::Q4_0),
            GgmlType::Q4_1 => DType::Quant(Quant::Q4_1),
            GgmlType::Q5_0 => DType::Quant(Quant::Q5_0),
            GgmlType::Q5_1 => DType::Quant(Quant::Q5_1),
            GgmlType::Q8_0 => DType::Quant(Quant::Q8_0),
            GgmlType::Q2_K => DType::Quant(Quant::Q2_K),
            GgmlType::Q3_K => DType::Quant(Quant::Q3_K),
            GgmlType::Q4_K => DType::Quant(Quant::Q4_K),
            GgmlType::Q5_K => DType::Quant(Quant::Q5_K),
            GgmlType::Q6_K => DType::Quant(Quant::Q6_K),
        }
    }
}

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Decodes `data` (whole blocks of `kind`) into f32 values, appended to `out`.
/// The caller checks that `data` is a whole number of blocks.
pub fn dequantize(kind: GgmlType, data: &[u8], out: &mut Vec<f32>) {
    let (_, block_bytes) = kind.block();
    debug_assert_eq!(data.len() % block_bytes, 0);
    for b in data.chunks_exact(block_bytes) {
        match kind {
            GgmlType::F32 => out.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            GgmlType::F16 => out.push(half(b, 0)),
            GgmlType::BF16 => out.push(f32::from_bits(
                (u16::from_le_bytes([b[0], b[1]]) as u32) << 16,
            )),
            GgmlType::Q4_0 => q4_0(b, out),
            GgmlType::Q4_1 => q4_1(b, out),
            GgmlType::Q5_0 => q5(b, false, out),
            GgmlType::Q5_1 => q5(b, true, out),
            GgmlType::Q8_0 => {
                let d = half(b, 0);
                out.extend(b[2..34].iter().map(|&q| d * (q as i8) as f32));
            }
            GgmlType::Q2_K => q2_k(b, out),
            GgmlType::Q3_K => q3_k(b, out),
            GgmlType::Q4_K => q4_k(b, out),
            GgmlType::Q5_K => q5_k(b, out),
            GgmlType::Q6_K => q6_k(b, out),
        }
    }
}

/// d, then 16 bytes: value j in the low nibble of byte j, value j + 16 in its high one.
fn q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half(b, 0);
    let qs = &b[2..18];
    out.extend(qs.iter().map(|&q| ((q & 0xF) as i32 - 8) as f32 * d));
    out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
}

/// d and a minimum m, then nibbles as in Q4_0 without the offset.
fn q4_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (half(b, 0), half(b, 2));
    let qs = &b[4..20];
    out.extend(qs.iter().map(|&q| (q & 0xF) as f32 * d + m));
    out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
}

/// Q5_0 (offset −16) and Q5_1 (minimum m): Q4's nibbles plus a fifth bit per
/// value from a 32-bit word.
fn q5(b: &[u8], with_min: bool, out: &mut Vec<f32>) {
    let d = half(b, 0);
    let (m, at) = if with_min { (half(b, 2), 4) } else { (0.0, 2) };
    let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let qs = &b[at + 4..at + 20];
    let value = |j: usize, high: bool| {
        let (nibble, bit) = if high {
            (qs[j] >> 4, (qh >> (j + 12)) & 0x10)
        } else {
            (qs[j] & 0xF, ((qh >> j) << 4) & 0x10)
        };
        (nibble as u32 | bit) as i32
    };
    for high in [false, true] {
        for j in 0..16 {
            let q = value(j, high);
            out.push(if with_min {
                q as f32 * d + m
            } else {
                (q - 16) as f32 * d
            });
        }
    }
}

/// The 6-bit scale and minimum of sub-block `j` of Q4_K/Q5_K (`get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (sc as f32, m as f32)
}

/// 16 sub-blocks of 16 two-bit values, each with a 4-bit scale and minimum.
fn q2_k(b: &[u8], out: &mut Vec<f32>) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (half(b, 80), half(b, 82));
    let mut is = 0;
    for q in qs.chunks_exact(32) {
        for shift in [0, 2, 4, 6] {
            for half_block in [&q[0..16], &q[16..32]] {
                let sc = scales[is];
                is += 1;
                let dl = d * (sc & 0xF) as f32;
                let ml = dmin * (sc >> 4) as f32;
                out.extend(
                    half_block
                        .iter()
                        .map(|&v| dl * ((v >> shift) & 3) as f32 - ml),
                );
            }
        }
    }
}

/// Two bits per value plus a high bit in `hmask` (clear means −4), 16 signed
/// 6-bit scales packed in 12 bytes.
fn q3_k(b: &[u8], out: &mut Vec<f32>) {
    let (hmask, qs, packed) = (&b[0..32], &b[32..96], &b[96..108]);
    let d_all = half(b, 108);
    // Scale i: low 4 bits from byte i % 8 (low nibble for i < 8, high
    // otherwise), high 2 bits from byte 8 + i % 4 at bit 2·(i / 4).
    let scale = |i: usize| {
        let low = if i < 8 {
            packed[i] & 0xF
        } else {
            packed[i - 8] >> 4
        };
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        (low | (high << 4)) as i32 - 32
    };
    let mut is = 0;
    let mut m = 1u8;
    for q in qs.chunks_exact(32) {
        for shift in [0, 2, 4, 6] {
            for start in [0, 16] {
                let dl = d_all * scale(is) as f32;
                is += 1;
                for l in start..start + 16 {
                    let low = ((q[l] >> shift) & 3) as i32;
                    let v = low - if hmask[l] & m != 0 { 0 } else { 4 };
                    out.push(dl * v as f32);
                }
            }
            m <<= 1;
        }
    }
}

/// 8 sub-blocks of 32 four-bit values, each with a 6-bit scale and minimum.
fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for (pair, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * pair, scales);
        let (sc2, m2) = scale_min_k4(2 * pair + 1, scales);
        let (d1, min1, d2, min2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        out.extend(q.iter().map(|&v| d1 * (v & 0xF) as f32 - min1));
        out.extend(q.iter().map(|&v| d2 * (v >> 4) as f32 - min2));
    }
}

/// Q4_K's layout plus a fifth bit per value in `qh`.
fn q5_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for (pair, ql) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * pair, scales);
        let (sc2, m2) = scale_min_k4(2 * pair + 1, scales);
        let (d1, min1, d2, min2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        let (u1, u2) = (1u8 << (2 * pair), 2u8 << (2 * pair));
        out.extend((0..32).map(|l| {
            let high = if qh[l] & u1 != 0 { 16 } else { 0 };
            d1 * ((ql[l] & 0xF) + high) as f32 - min1
        }));
        out.extend((0..32).map(|l| {
            let high = if qh[l] & u2 != 0 { 16 } else { 0 };
            d2 * ((ql[l] >> 4) + high) as f32 - min2
        }));
    }
}

/// Six bits per value (4 in `ql`, 2 in `qh`), offset −32, 16 signed 8-bit scales.
fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = half(b, 208);
    for n in 0..2 {
        let (ql, qh, sc) = (&ql[64 * n..], &qh[32 * n..], &scales[8 * n..]);
        let mut y = [0f32; 128];
        for l in 0..32 {
            let is = l / 16;
            let q = [
                (ql[l] & 0xF) | ((qh[l] & 3) << 4),
                (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4),
                (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
            ];
            for (k, &v) in q.iter().enumerate() {
                let s = sc[is + 2 * k] as i8 as f32;
                y[l + 32 * k] = d * s * (v as i32 - 32) as f32;
            }
        }
        out.extend_from_slice(&y);
    }
}

/// The formats [`quantize`] writes.
pub const WRITABLE: [GgmlType; 8] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
];

/// The value of largest magnitude, the first one on ties, with its sign
/// (Q4_0's and Q5_0's scale is it over −2^(bits−1)).
fn signed_absmax(b: &[f32]) -> f32 {
    b.iter()
        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
}

/// The smallest and largest value (Q4_1's and Q5_1's range).
fn min_max(b: &[f32]) -> (f32, f32) {
    let min = b.iter().copied().fold(f32::INFINITY, f32::min);
    let max = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (min, max)
}

/// Q5's 32 five-bit values as stored: the fifth bits in a 32-bit word (bit
/// j for value j), then the low nibbles of values j and j + 16 in byte j.
fn pack_q5(q: &[u8; 32], out: &mut Vec<u8>) {
    let qh = (0..32).fold(0u32, |h, j| h | (((q[j] >> 4) as u32 & 1) << j));
    out.extend(qh.to_le_bytes());
    out.extend((0..16).map(|j| (q[j] & 0xF) | ((q[j + 16] & 0xF) << 4)));
}

/// Encodes `values` (a whole number of blocks) as `kind`, as ggml's
/// `quantize_row_*_ref` and gguf-py's `quants.quantize` do (same operations
/// in f32, the same bytes); None for a format not in [`WRITABLE`].
pub fn quantize(kind: GgmlType, values: &[f32]) -> Option<Vec<u8>> {
    let (per_block, block_bytes) = kind.block();
    debug_assert_eq!(values.len() % per_block, 0);
    let mut out = Vec::with_capacity(values.len() / per_block * block_bytes);
    let f16_bytes = |v: f32| f16::from_f32(v).to_le_bytes();
    let inverse = |d: f32| if d == 0.0 { 0.0 } else { 1.0 / d };
    match kind {
        GgmlType::F32 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
        GgmlType::F16 => values.iter().for_each(|&v| out.extend(f16_bytes(v))),
        GgmlType::BF16 => values
            .iter()
            .for_each(|&v| out.extend(half::bf16::from_f32(v).to_le_bytes())),
        GgmlType::Q8_0 => {
            for b in values.chunks_exact(32) {
                let d = b.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                let id = inverse(d);
                out.extend(f16_bytes(d));
                out.extend(b.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        GgmlType::Q4_0 => {
            for b in values.chunks_exact(32) {
                let d = signed_absmax(b) / -8.0;
                let id = inverse(d);
                out.extend(f16_bytes(d));
                let q = |v: f32| ((v * id + 8.5) as i8).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
            }
        }
        GgmlType::Q4_1 => {
            for b in values.chunks_exact(32) {
                let (min, max) = min_max(b);
                let d = (max - min) / 15.0;
                let id = inverse(d);
                out.extend(f16_bytes(d));
                out.extend(f16_bytes(min));
                let q = |v: f32| (((v - min) * id + 0.5) as i8).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
            }
        }
        GgmlType::Q5_0 => {
            for b in values.chunks_exact(32) {
                let d = signed_absmax(b) / -16.0;
                let id = inverse(d);
                out.extend(f16_bytes(d));
                let q: [u8; 32] =
                    std::array::from_fn(|j| ((b[j] * id + 16.5) as i32).clamp(0, 31) as u8);
                pack_q5(&q, &mut out);
            }
        }
        GgmlType::Q5_1 => {
            for b in values.chunks_exact(32) {
                let (min, max) = min_max(b);
                let d = (max - min) / 31.0;
                let id = inverse(d);
                out.extend(f16_bytes(d));
                out.extend(f16_bytes(min));
                let q: [u8; 32] =
                    std::array::from_fn(|j| (((b[j] - min) * id + 0.5) as i32).clamp(0, 31) as u8);
                pack_q5(&q, &mut out);
            }
        }
        _ => return None,
    }
    Some(out)
}
