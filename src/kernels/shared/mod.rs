//! WGSL shared by several families: the constants and helpers every kernel
//! gets (`common.wgsl`), the row reductions, the 16-bit codecs, llama.cpp's
//! block decoder, and the loaders that read a weight operand of any dtype.

use crate::dtype::{DType, Quant};

pub(crate) const COMMON: &str = include_str!("common.wgsl");
/// Workgroup sum and maximum of the row kernels through workgroup memory.
pub(crate) const ROW_REDUCE: &str = include_str!("row_reduce.wgsl");
/// The same through subgroup operations, for devices that have them.
pub(crate) const ROW_REDUCE_SUBGROUPS: &str = include_str!("row_reduce_subgroups.wgsl");
pub(crate) const F16_DECODE: &str = include_str!("f16_decode.wgsl");
pub(crate) const BF16_ENCODE: &str = include_str!("bf16_encode.wgsl");
pub(crate) const F16_ENCODE: &str = include_str!("f16_encode.wgsl");
const QUANT: &str = include_str!("quant.wgsl");
const LOAD_F32: &str = include_str!("load_f32.wgsl");
const LOAD_BF16: &str = include_str!("load_bf16.wgsl");
const LOAD_F16: &str = include_str!("load_f16.wgsl");
const LOAD_QUANT: &str = include_str!("load_quant.wgsl");
const UNPACK_PAIR_BF16: &str = include_str!("unpack_pair_bf16.wgsl");
const UNPACK_PAIR_F16: &str = include_str!("unpack_pair_f16.wgsl");

/// Every dtype a frozen weight operand may have: f32, 16-bit, or blocks.
pub(crate) fn weight_dtypes() -> impl Iterator<Item = DType> {
    [DType::F32, DType::BF16, DType::F16]
        .into_iter()
        .chain(Quant::ALL.map(DType::Quant))
}

/// Declares `word` (the array element type) and `load(i) -> f32`, which reads
/// element `i` of `array` whatever its storage type (the `load_*.wgsl` files
/// with their names filled in). 16-bit types also get `unpack_pair`.
pub(crate) fn weight_loader(word: &str, load: &str, array: &str, dtype: DType) -> String {
    let fill = |template: &str| {
        template
            .replace("{word}", word)
            .replace("{load}", load)
            .replace("{array}", array)
    };
    match dtype {
        DType::F32 => fill(LOAD_F32),
        DType::BF16 => fill(LOAD_BF16) + &unpack_pair(dtype),
        DType::F16 => fill(LOAD_F16) + &unpack_pair(dtype),
        DType::Quant(q) => fill(LOAD_QUANT).replace("{quant}", q.name()) + F16_DECODE + QUANT,
        DType::I32 => unreachable!("integer tensors are never weight operands"),
    }
}

/// `unpack_pair(word)`: the two 16-bit values of a word, low half first.
pub(crate) fn unpack_pair(dtype: DType) -> String {
    match dtype {
        DType::BF16 => UNPACK_PAIR_BF16.to_string(),
        DType::F16 => format!("{UNPACK_PAIR_F16}{F16_DECODE}"),
        _ => unreachable!("only 16-bit words hold pairs"),
    }
}
