//! The workgroup-tiled kernel's side of its tiles (matmul_tiled.wgsl): when
//! it may read operands as vec4s, and each variant's header. The tiles
//! themselves, and which a device allows, are `gpu::MatmulTile`'s.
//!
//! Every tile sums each output in the same order (one fma chain over k from
//! 0, the same 16-deep K-slices, no split-K), so every tile choice gives
//! bit-identical results: tuning picks a speed, never a number.

use crate::dtype::DType;
use crate::gpu::MatmulTile;

/// Whether the tiled kernel may read op(A) and op(B) four elements at a
/// time: each operand's contiguous dimension (K for A, M transposed; N for
/// B, K transposed) is a multiple of 4, so four neighbours are in or out of
/// the matrix together (and batch strides stay multiples of 4).
pub(crate) fn tiled_vec4(trans_a: bool, trans_b: bool, m: usize, k: usize, n: usize) -> bool {
    let a = if trans_a { m } else { k };
    let b = if trans_b { k } else { n };
    a.is_multiple_of(4) && b.is_multiple_of(4)
}

/// The tiled kernel's header after matmul_io.wgsl's declarations: the tile
/// constants, `load_a`/`load_a4` for A's `AWord` ([`a_word`]), and `load_b4`
/// for every B (`load_b` comes from the weight loader, or from
/// [`VEC4_F32_B`] for an f32 B read as vec4s).
pub(crate) fn header(tile: MatmulTile, vec4: bool, b_dtype: DType) -> String {
    let ((bm, bn), (rm, rn)) = (tile.size(), tile.blocks());
    // A quantized B is staged one element at a time (B_ONE): its decoder is
    // large, and four- or sixteen-element units would inline it that often.
    let quant = matches!(b_dtype, DType::Quant(_));
    let constants = format!(
        "const BM: u32 = {bm}u;\nconst BN: u32 = {bn}u;\nconst RM: u32 = {rm}u;\nconst RN: u32 = {rn}u;\n\
         const VEC_A: bool = {vec4};\nconst VEC_B: bool = {};\nconst B_ONE: bool = {quant};\n",
        vec4 && !quant
    );
    let load_a = if vec4 {
        include_str!("tiled_load_a_vec4.wgsl")
    } else {
        include_str!("tiled_load_a_f32.wgsl")
    };
    let load_b4 = if vec4 && b_dtype == DType::F32 {
        include_str!("tiled_load_b4_vec4.wgsl")
    } else {
        include_str!("tiled_load_b4_elements.wgsl")
    };
    constants + load_a + load_b4
}

/// `AWord`, A's array element: `vec4<f32>` for the tiled kernel's vector
/// loads, else `f32`.
pub(crate) fn a_word(vec4: bool) -> &'static str {
    if vec4 {
        include_str!("a_vec4.wgsl")
    } else {
        include_str!("a_f32.wgsl")
    }
}

/// An f32 B read as vec4s (the weight loader's f32 `BWord` is a scalar).
pub(crate) const VEC4_F32_B: &str = include_str!("b_f32_vec4.wgsl");
