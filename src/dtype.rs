//! Element types of tensors, below the GPU layer so that kernels and the
//! dispatcher can name them without reaching up to tensors.

/// Element types. Everything trained is f32; frozen weights may be stored as
/// bf16 or f16, packed two per `u32`, or as llama.cpp's quantized blocks,
/// and are decoded inside the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    F16,
    I32,
    Quant(Quant),
}

/// llama.cpp's block formats (ggml's `block_q4_0` ...), held on the GPU
/// exactly as a GGUF file stores them. A block never spans two rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum Quant {
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

impl Quant {
    pub const ALL: [Quant; 10] = [
        Quant::Q4_0,
        Quant::Q4_1,
        Quant::Q5_0,
        Quant::Q5_1,
        Quant::Q8_0,
        Quant::Q2_K,
        Quant::Q3_K,
        Quant::Q4_K,
        Quant::Q5_K,
        Quant::Q6_K,
    ];

    /// (values per block, bytes per block), as ggml defines them.
    pub fn block(self) -> (usize, usize) {
        match self {
            Quant::Q4_0 => (32, 18),
            Quant::Q4_1 => (32, 20),
            Quant::Q5_0 => (32, 22),
            Quant::Q5_1 => (32, 24),
            Quant::Q8_0 => (32, 34),
            Quant::Q2_K => (256, 84),
            Quant::Q3_K => (256, 110),
            Quant::Q4_K => (256, 144),
            Quant::Q5_K => (256, 176),
            Quant::Q6_K => (256, 210),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Quant::Q4_0 => "q4_0",
            Quant::Q4_1 => "q4_1",
            Quant::Q5_0 => "q5_0",
            Quant::Q5_1 => "q5_1",
            Quant::Q8_0 => "q8_0",
            Quant::Q2_K => "q2_k",
            Quant::Q3_K => "q3_k",
            Quant::Q4_K => "q4_k",
            Quant::Q5_K => "q5_k",
            Quant::Q6_K => "q6_k",
        }
    }
}

impl DType {
    /// Bytes of `n` elements as stored on the GPU (16-bit types and blocks
    /// round up to whole words).
    pub fn storage_bytes(self, n: usize) -> u64 {
        (self.file_bytes(n) as u64).next_multiple_of(4)
    }

    /// Bytes of `n` elements as stored in a file (blocks: `n` rounded up to
    /// whole blocks).
    pub fn file_bytes(self, n: usize) -> usize {
        match self {
            DType::F32 | DType::I32 => 4 * n,
            DType::BF16 | DType::F16 => 2 * n,
            DType::Quant(q) => {
                let (values, bytes) = q.block();
                n.div_ceil(values) * bytes
            }
        }
    }

    /// The dtype a weight derived from one of this dtype is held in (a
    /// merged weight): itself, or f32 for blocks, which are only ever read.
    pub fn dense(self) -> DType {
        match self {
            DType::Quant(_) => DType::F32,
            other => other,
        }
    }

    /// Elements per storage unit: 1, or a block's values.
    pub fn block_values(self) -> usize {
        match self {
            DType::Quant(q) => q.block().0,
            _ => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::I32 => "i32",
            DType::Quant(q) => q.name(),
        }
    }

    /// True for the types a weight operand of a kernel may have.
    pub fn is_float(self) -> bool {
        !matches!(self, DType::I32)
    }
}
