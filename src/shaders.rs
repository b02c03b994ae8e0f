//! Every compute kernel the library can launch, and the WGSL source of each
//! variant. A variant's source is the family's `.wgsl` file (from `shaders/`)
//! behind a short generated header: the constants and small functions that
//! differ between variants (transposes, the weight's storage type, the
//! elementwise op). `all()` lists every variant so tests can validate and
//! cross-compile each one with naga.

use crate::tensor::{DType, Quant};

mod matmul_tiles;
pub(crate) use matmul_tiles::tiled_vec4;
pub use matmul_tiles::MatmulTile;

const COMMON: &str = include_str!("../shaders/common.wgsl");
const ROW_REDUCE: &str = include_str!("../shaders/row_reduce.wgsl");
const ROW_REDUCE_SUBGROUPS: &str = include_str!("../shaders/row_reduce_subgroups.wgsl");
const MATMUL_IO: &str = include_str!("../shaders/matmul_io.wgsl");
const MATMUL_TILED: &str = include_str!("../shaders/matmul_tiled.wgsl");
const MATMUL_SKINNY: &str = include_str!("../shaders/matmul_skinny.wgsl");
const MATMUL_BROADCAST: &str = include_str!("../shaders/matmul_broadcast.wgsl");
const MATMUL_COOP: &str = include_str!("../shaders/matmul_coop.wgsl");
const NORM: &str = include_str!("../shaders/norm.wgsl");
const DORA: &str = include_str!("../shaders/dora.wgsl");
const DORA_NORM: &str = include_str!("../shaders/dora_norm.wgsl");
const DORA_BACKWARD: &str = include_str!("../shaders/dora_backward.wgsl");
const ELEMENTWISE: &str = include_str!("../shaders/elementwise.wgsl");
const REDUCE: &str = include_str!("../shaders/reduce.wgsl");
const SOFTMAX: &str = include_str!("../shaders/softmax.wgsl");
const LOSS: &str = include_str!("../shaders/loss.wgsl");
const ADAMW: &str = include_str!("../shaders/adamw.wgsl");
const EMBEDDING: &str = include_str!("../shaders/embedding.wgsl");
const ROPE: &str = include_str!("../shaders/rope.wgsl");
const COLUMNS: &str = include_str!("../shaders/columns.wgsl");
const ATTENTION: &str = include_str!("../shaders/attention.wgsl");
const FLASH_ATTENTION: &str = include_str!("../shaders/flash_attention.wgsl");
const RMSNORM: &str = include_str!("../shaders/rmsnorm.wgsl");
const BENCH: &str = include_str!("../shaders/bench.wgsl");
const QUANT: &str = include_str!("../shaders/quant.wgsl");

/// How a kernel declares a storage binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}
use Access::{Read, ReadWrite};

/// Elementwise functions of one argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    /// alpha * x
    Scale,
    /// x * sigmoid(x)
    Silu,
    /// GELU's tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
    GeluTanh,
    Square,
    Sqrt,
    Exp,
    /// alpha·tanh(x / alpha): Gemma's logit soft-capping
    Softcap,
    /// 1 − (x / alpha)²: the cap's derivative, in terms of its output x
    SoftcapGrad,
}

/// Elementwise functions of two arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    /// g * silu'(x): the backward of silu, with g first.
    SiluBackward,
    /// g * gelu_tanh'(x), with g first.
    GeluTanhBackward,
    /// The second operand alone: expands a broadcast operand to full shape.
    Right,
}

/// How the second operand of a binary op is indexed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broadcast {
    /// Same shape as the first.
    None,
    /// One value per column: shape is the last dimension (a bias).
    Row,
    /// One value per row: shape is the leading dimensions with a trailing 1.
    PerRow,
}

/// Which matmul kernel computes a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKind {
    /// Workgroup-memory tiles (matmul_tiled.wgsl): real GPUs. `vec4` reads
    /// both operands four elements at a time (see [`tiled_vec4`]).
    Tiled { tile: MatmulTile, vec4: bool },
    /// No tiles, for a few rows of A not transposed (matmul_skinny.wgsl).
    Skinny,
    /// Register tiles, no workgroup memory (matmul_broadcast.wgsl): CPU-emulated
    /// devices. Wide groups (lanes x 1 invocations) broadcast A; tall ones (1 x lanes),
    /// for narrow outputs, broadcast B. Needs N >= 8, and with a 16-bit B an even
    /// K (B transposed) or N (not), since it reads two neighbours per word.
    /// `vector_b` reads B in vector words (see [`broadcast_vector_b`]): fewer,
    /// wider loads, which a software device pays for per load, not per byte.
    /// `lanes` invocations make a group: the device's SIMD width (see
    /// [`broadcast_lanes_for`]).
    Broadcast {
        tall: bool,
        vector_b: bool,
        lanes: u32,
    },
    /// Cooperative matrices (matmul_coop.wgsl): f16 operands, f32
    /// accumulators, on `tile` x `tile` hardware tiles (16: Vulkan's
    /// `VK_KHR_cooperative_matrix`; 8: Metal's simdgroup matrices), one
    /// subgroup of `lanes` invocations per workgroup. Opt-in, and only after
    /// a self-test on the device (see `ops::matmul`).
    Cooperative { tile: u32, lanes: u32 },
}

/// Invocations of a broadcast-matmul workgroup along (columns, rows): wide
/// groups are lanes x 1, tall ones 1 x lanes. Each invocation computes 8 x 8
/// outputs.
pub(crate) fn broadcast_lanes(tall: bool, lanes: u32) -> (usize, usize) {
    let lanes = lanes as usize;
    if tall {
        (1, lanes)
    } else {
        (lanes, 1)
    }
}

/// The broadcast matmul's group size on an adapter: its SIMD width when the
/// driver states one (lavapipe: 8), within 8..=16, else 16. A group of one
/// SIMD batch wastes the least on widths that are not a multiple of its
/// columns (576 = 9 x 64 with 8 lanes, 4.5 x 128 with 16); a group narrower
/// than the SIMD width would leave lanes idle.
pub(crate) fn broadcast_lanes_for(info: &wgpu::AdapterInfo) -> u32 {
    if info.subgroup_min_size == info.subgroup_max_size {
        info.subgroup_max_size.clamp(8, 16).next_power_of_two()
    } else {
        16
    }
}

/// Whether the broadcast matmul can read B in vector words: a row of op(B)'s 8
/// columns as two `vec4<f32>` or one `vec4<u32>` of 16-bit pairs (B not
/// transposed, N a multiple of 4 or 8), or a column's k and k+1 as one
/// `vec2<f32>` (f32 B transposed, K even). A transposed 16-bit B already reads
/// k and k+1 in one word.
pub(crate) fn broadcast_vector_b(b_dtype: DType, trans_b: bool, k: usize, n: usize) -> bool {
    match (b_dtype, trans_b) {
        (DType::F32, false) => n.is_multiple_of(4),
        (DType::F32, true) => k.is_multiple_of(2),
        (DType::BF16 | DType::F16, false) => n.is_multiple_of(8),
        _ => false,
    }
}

/// The passes of the fused attention (flash_attention.wgsl).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionPass {
    /// The output and each query's log-sum-exp.
    Forward,
    /// Σ d_out ⊙ out per query: the softmax backward's row term.
    Delta,
    /// dL/dq, one workgroup per block of queries.
    BackwardQuery,
    /// dL/dk and dL/dv, one workgroup per block of keys (summing a key/value
    /// head's query heads), so no two workgroups write one value.
    BackwardKeys,
}

/// The fused attention's tiles for heads of up to `head_dim_max` (64, 128
/// or 256) within `workgroup_bytes` of workgroup memory: queries per
/// forward and dL/dq workgroup (8, or 4 for heads past 128: three query
/// tiles and the scores stay under 16 KiB), and keys per dL/dk,dL/dv
/// workgroup (8 or 4: four key tiles and two of weights must fit). `None`
/// where even 4 keys do not fit (heads past 128 under a 16 KiB limit).
pub(crate) fn attention_tiles(head_dim_max: u32, workgroup_bytes: u32) -> Option<(u32, u32)> {
    let rows = attention_query_rows(head_dim_max);
    let key_bytes = |key_rows: u32| 4 * (4 * key_rows * head_dim_max + 2 * key_rows * 64);
    let key_rows = [8, 4]
        .into_iter()
        .find(|&r| key_bytes(r) <= workgroup_bytes)?;
    Some((rows, key_rows))
}

/// Queries per fused-attention forward and dL/dq workgroup (the source's `ROWS`).
fn attention_query_rows(head_dim_max: u32) -> u32 {
    if head_dim_max > 128 {
        4
    } else {
        8
    }
}

/// The fused attention's delta pass: it uses no tiles, so one variant serves all.
pub(crate) const ATTENTION_DELTA: Kernel = Kernel::FlashAttention {
    pass: AttentionPass::Delta,
    head_dim_max: 64,
    key_rows: 8,
};

/// The smallest head-dimension class of the fused attention that holds
/// `head_dim`, or `None` past 256 (such models take the matmul path).
pub(crate) fn attention_head_dim_max(head_dim: usize) -> Option<u32> {
    [64, 128, 256].into_iter().find(|&m| head_dim <= m as usize)
}

/// One compiled kernel variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Matmul {
        trans_a: bool,
        trans_b: bool,
        b_dtype: DType,
        /// Scales each output column and adds a bias after the product.
        epilogue: bool,
        kind: MatmulKind,
    },
    RowNorm {
        dtype: DType,
    },
    FactoredNorm,
    /// The fused DoRA layer's backward: g ⊙ m/‖V‖ and the column sums behind dL/dm.
    DoraBackwardPrep,
    Recompose {
        dtype: DType,
    },
    Unary(UnaryOp),
    Binary(BinaryOp, Broadcast),
    AddAssign,
    Widen(DType),
    Transpose,
    Dropout,
    /// f32 -> bf16 or f16, packed two per word.
    Pack16(DType),
    SumRows,
    SumCols,
    SumSquaresInto,
    SoftmaxForward,
    SoftmaxBackward,
    CrossEntropyRows,
    CrossEntropyMean,
    CrossEntropyBackward,
    AdamW,
    Embedding(DType),
    Rope,
    /// A band of columns copied between matrices (fused-projection slices).
    CopyCols,
    SplitHeads,
    MergeHeads,
    CausalSoftmax,
    /// One pass of the fused attention, with tiles for heads of up to
    /// `head_dim_max` and `key_rows` keys per dL/dk,dL/dv workgroup.
    FlashAttention {
        pass: AttentionPass,
        head_dim_max: u32,
        key_rows: u32,
    },
    RmsNormForward(DType),
    RmsNormBackward(DType),
    /// The benchmark's FMA loop.
    FmaPeak,
}

impl Kernel {
    /// A unique name for the variant: the pipeline cache key.
    pub fn label(&self) -> String {
        format!("{self:?}")
    }

    pub fn entry(&self) -> &'static str {
        match self {
            Kernel::Matmul { .. } => "main",
            Kernel::RowNorm { .. } => "row_norm",
            Kernel::Recompose { .. } => "recompose",
            Kernel::FactoredNorm => "factored_norm",
            Kernel::DoraBackwardPrep => "dora_backward_prep",
            Kernel::Unary(_) => "map_unary",
            Kernel::Binary(..) => "map_binary",
            Kernel::AddAssign => "add_assign",
            Kernel::Widen(_) => "widen",
            Kernel::Transpose => "transpose2d",
            Kernel::Dropout => "dropout",
            Kernel::Pack16(_) => "pack16",
            Kernel::SumRows => "sum_rows",
            Kernel::SumCols => "sum_cols",
            Kernel::SumSquaresInto => "sum_squares_into",
            Kernel::SoftmaxForward => "softmax_forward",
            Kernel::SoftmaxBackward => "softmax_backward",
            Kernel::CrossEntropyRows => "ce_rows",
            Kernel::CrossEntropyMean => "ce_mean",
            Kernel::CrossEntropyBackward => "ce_backward",
            Kernel::AdamW => "adamw_step",
            Kernel::Embedding(_) => "embedding",
            Kernel::Rope => "rope",
            Kernel::CopyCols => "copy_cols",
            Kernel::SplitHeads => "split_heads",
            Kernel::MergeHeads => "merge_heads",
            Kernel::CausalSoftmax => "causal_softmax",
            Kernel::FlashAttention { pass, .. } => match pass {
                AttentionPass::Forward => "attention_forward",
                AttentionPass::Delta => "attention_delta",
                AttentionPass::BackwardQuery => "attention_backward_query",
                AttentionPass::BackwardKeys => "attention_backward_keys",
            },
            Kernel::RmsNormForward(_) => "rmsnorm_forward",
            Kernel::RmsNormBackward(_) => "rmsnorm_backward",
            Kernel::FmaPeak => "fma_peak",
        }
    }

    /// The storage bindings the entry point uses, as (binding, access) in the
    /// order a dispatch passes its buffers. Binding 0 is always the parameters.
    pub fn bindings(&self) -> &'static [(u32, Access)] {
        match self {
            Kernel::Matmul {
                epilogue: false, ..
            } => &[(1, Read), (2, Read), (3, ReadWrite)],
            Kernel::Matmul { epilogue: true, .. } => {
                &[(1, Read), (2, Read), (3, ReadWrite), (4, Read), (5, Read)]
            }
            Kernel::RowNorm { .. } => &[(1, Read), (2, ReadWrite)],
            Kernel::FactoredNorm => &[(1, Read), (2, Read), (3, Read), (4, Read), (5, ReadWrite)],
            Kernel::DoraBackwardPrep => &[
                (1, Read),
                (2, Read),
                (3, Read),
                (4, Read),
                (5, ReadWrite),
                (6, ReadWrite),
            ],
            Kernel::Recompose { .. } => &[
                (1, Read),
                (2, Read),
                (3, Read),
                (4, Read),
                (5, ReadWrite),
                (6, ReadWrite),
            ],
            Kernel::Unary(_) => &[(1, Read), (3, ReadWrite)],
            Kernel::Binary(..) => &[(1, Read), (2, Read), (3, ReadWrite)],
            Kernel::AddAssign => &[(1, Read), (3, ReadWrite)],
            Kernel::Widen(_) => &[(3, ReadWrite), (4, Read)],
            Kernel::Transpose | Kernel::Dropout => &[(1, Read), (3, ReadWrite)],
            Kernel::Pack16(_) => &[(1, Read), (5, ReadWrite)],
            Kernel::SumRows | Kernel::SumCols | Kernel::SumSquaresInto => {
                &[(1, Read), (2, ReadWrite)]
            }
            Kernel::SoftmaxForward => &[(1, Read), (3, ReadWrite)],
            Kernel::SoftmaxBackward => &[(1, Read), (2, Read), (3, ReadWrite)],
            Kernel::CrossEntropyRows => &[(1, Read), (2, Read), (3, ReadWrite), (4, ReadWrite)],
            Kernel::CrossEntropyMean => &[(2, Read), (3, ReadWrite), (5, ReadWrite)],
            Kernel::CrossEntropyBackward => &[
                (1, Read),
                (2, Read),
                (4, ReadWrite),
                (5, ReadWrite),
                (6, Read),
                (7, ReadWrite),
            ],
            Kernel::AdamW => &[(1, ReadWrite), (2, Read), (3, ReadWrite), (4, ReadWrite)],
            Kernel::Embedding(_) => &[(1, Read), (2, Read), (3, ReadWrite)],
            Kernel::Rope => &[(1, Read), (2, Read), (3, Read), (4, ReadWrite)],
            Kernel::SplitHeads | Kernel::MergeHeads | Kernel::CausalSoftmax | Kernel::CopyCols => {
                &[(1, Read), (2, ReadWrite)]
            }
            Kernel::FlashAttention { pass, .. } => match pass {
                AttentionPass::Forward => &[
                    (1, Read),
                    (2, Read),
                    (3, Read),
                    (4, ReadWrite),
                    (5, ReadWrite),
                ],
                AttentionPass::Delta => &[(4, ReadWrite), (6, Read), (7, ReadWrite)],
                AttentionPass::BackwardQuery => &[
                    (1, Read),
                    (2, Read),
                    (3, Read),
                    (5, ReadWrite),
                    (6, Read),
                    (7, ReadWrite),
                    (8, ReadWrite),
                ],
                AttentionPass::BackwardKeys => &[
                    (1, Read),
                    (2, Read),
                    (3, Read),
                    (5, ReadWrite),
                    (6, Read),
                    (7, ReadWrite),
                    (9, ReadWrite),
                    (10, ReadWrite),
                ],
            },
            Kernel::RmsNormForward(_) => &[(1, Read), (2, Read), (4, ReadWrite)],
            Kernel::RmsNormBackward(_) => &[(1, Read), (2, Read), (3, Read), (4, ReadWrite)],
            Kernel::FmaPeak => &[(1, ReadWrite)],
        }
    }

    /// The full WGSL source of this variant, for a device without subgroup
    /// operations.
    pub fn source(&self) -> String {
        self.source_for(false)
    }

    /// The full WGSL source of this variant; with `subgroups` (a device with
    /// `Features::SUBGROUP`), kernels that reduce across a row's workgroup do
    /// it with subgroup operations (row_reduce_subgroups.wgsl).
    pub fn source_for(&self, subgroups: bool) -> String {
        let (header, body) = match *self {
            Kernel::Matmul {
                trans_a,
                trans_b,
                b_dtype,
                epilogue,
                kind,
            } => (
                format!(
                    "const TRANS_A: bool = {trans_a};\nconst TRANS_B: bool = {trans_b};\n{MATMUL_IO}{}{}{}{}",
                    match kind {
                        MatmulKind::Tiled { vec4, .. } => matmul_tiles::a_word(vec4),
                        _ => matmul_tiles::a_word(false),
                    },
                    match kind {
                        MatmulKind::Broadcast { vector_b, .. } => {
                            broadcast_b_loader(b_dtype, trans_b, vector_b)
                        }
                        MatmulKind::Tiled { vec4: true, .. } if b_dtype == DType::F32 => {
                            matmul_tiles::VEC4_F32_B.to_string()
                        }
                        _ => weight_loader("BWord", "load_b", "b", b_dtype),
                    },
                    if epilogue {
                        MATMUL_EPILOGUE
                    } else {
                        "fn epilogue(v: f32, col: u32) -> f32 { return v; }\n"
                    },
                    match kind {
                        MatmulKind::Broadcast { tall, lanes, .. } => {
                            let (x, y) = broadcast_lanes(tall, lanes);
                            format!("const LANES_X: u32 = {x}u;\nconst LANES_Y: u32 = {y}u;\n")
                        }
                        MatmulKind::Cooperative { tile, lanes } => format!(
                            "const T: u32 = {tile}u;\nconst LANES: u32 = {lanes}u;\n\
                             alias TileA = coop_mat{tile}x{tile}<f16, A>;\n\
                             alias TileB = coop_mat{tile}x{tile}<f16, B>;\n\
                             alias TileC = coop_mat{tile}x{tile}<f32, C>;\n"
                        ),
                        MatmulKind::Tiled { tile, vec4 } => {
                            matmul_tiles::header(tile, vec4, b_dtype)
                        }
                        MatmulKind::Skinny => String::new(),
                    }
                ),
                match kind {
                    MatmulKind::Tiled { .. } => MATMUL_TILED,
                    MatmulKind::Skinny => MATMUL_SKINNY,
                    MatmulKind::Broadcast { .. } => MATMUL_BROADCAST,
                    MatmulKind::Cooperative { .. } => MATMUL_COOP,
                },
            ),
            Kernel::RowNorm { dtype } => (weight_loader("WWord", "load_w", "w", dtype), NORM),
            Kernel::Recompose { dtype } => (weight_loader("WWord", "load_w", "w", dtype), DORA),
            Kernel::FactoredNorm => (String::new(), DORA_NORM),
            Kernel::DoraBackwardPrep => (String::new(), DORA_BACKWARD),
            Kernel::Unary(op) => (
                elementwise_header(op, BinaryOp::Add, Broadcast::None, DType::F32),
                ELEMENTWISE,
            ),
            Kernel::Binary(op, bc) => (
                elementwise_header(UnaryOp::Scale, op, bc, DType::F32),
                ELEMENTWISE,
            ),
            Kernel::AddAssign => (
                elementwise_header(UnaryOp::Scale, BinaryOp::Add, Broadcast::None, DType::F32),
                ELEMENTWISE,
            ),
            Kernel::Widen(dtype) | Kernel::Pack16(dtype) => (
                elementwise_header(UnaryOp::Scale, BinaryOp::Add, Broadcast::None, dtype),
                ELEMENTWISE,
            ),
            Kernel::Transpose | Kernel::Dropout => (
                elementwise_header(UnaryOp::Scale, BinaryOp::Add, Broadcast::None, DType::F32),
                ELEMENTWISE,
            ),
            Kernel::SumRows | Kernel::SumCols | Kernel::SumSquaresInto => (String::new(), REDUCE),
            Kernel::SoftmaxForward | Kernel::SoftmaxBackward => (String::new(), SOFTMAX),
            Kernel::CrossEntropyRows | Kernel::CrossEntropyMean | Kernel::CrossEntropyBackward => {
                (String::new(), LOSS)
            }
            Kernel::AdamW => (String::new(), ADAMW),
            Kernel::Embedding(dtype) => (weight_loader("WWord", "load_w", "w", dtype), EMBEDDING),
            Kernel::Rope => (String::new(), ROPE),
            Kernel::CopyCols => (String::new(), COLUMNS),
            Kernel::SplitHeads | Kernel::MergeHeads | Kernel::CausalSoftmax => {
                (String::new(), ATTENTION)
            }
            Kernel::FlashAttention {
                head_dim_max,
                key_rows,
                ..
            } => {
                let rows = attention_query_rows(head_dim_max);
                (
                    format!(
                        "const D_MAX: u32 = {head_dim_max}u;\nconst ROWS: u32 = {rows}u;\n\
                         const KEY_ROWS: u32 = {key_rows}u;\n"
                    ),
                    FLASH_ATTENTION,
                )
            }
            Kernel::RmsNormForward(dtype) | Kernel::RmsNormBackward(dtype) => {
                (weight_loader("WWord", "load_w", "w", dtype), RMSNORM)
            }
            Kernel::FmaPeak => (String::new(), BENCH),
        };
        // Only kernels that reduce rows (their entry points take a RowLane)
        // use subgroup operations. naga 30 takes them without WGSL's
        // `enable subgroups;` (it refuses that directive); the device's
        // `Features::SUBGROUP` is what allows them.
        let reduce = if subgroups && self.reduces_rows() {
            ROW_REDUCE_SUBGROUPS
        } else {
            ROW_REDUCE
        };
        format!(
            "{}// variant: {}\n{header}\n{COMMON}\n{reduce}\n{body}",
            self.enables(),
            self.label()
        )
    }

    /// The WGSL `enable` directives the variant needs (they must open the
    /// module): f16 and cooperative matrices for the cooperative matmul.
    pub fn enables(&self) -> &'static str {
        match self {
            Kernel::Matmul {
                kind: MatmulKind::Cooperative { .. },
                ..
            } => "enable f16;\nenable wgpu_cooperative_matrix;\n",
            _ => "",
        }
    }

    /// Whether the kernel reduces across a row's workgroup (workgroup_sum or
    /// workgroup_max), so that subgroup operations can do it.
    pub fn reduces_rows(&self) -> bool {
        matches!(
            self,
            Kernel::RowNorm { .. }
                | Kernel::Recompose { .. }
                | Kernel::SumRows
                | Kernel::SumSquaresInto
                | Kernel::SoftmaxForward
                | Kernel::SoftmaxBackward
                | Kernel::CrossEntropyRows
                | Kernel::CrossEntropyMean
                | Kernel::CausalSoftmax
                | Kernel::RmsNormForward(_)
                | Kernel::RmsNormBackward(_)
        )
    }

    /// Every kernel variant the library can launch.
    pub fn all() -> Vec<Kernel> {
        let weight_types = [DType::F32, DType::BF16, DType::F16];
        let quants = Quant::ALL.map(DType::Quant);
        let mut v = Vec::new();
        for trans_a in [false, true] {
            for trans_b in [false, true] {
                for b_dtype in weight_types.into_iter().chain(quants) {
                    for epilogue in [false, true] {
                        let broadcast = [8, 16].into_iter().flat_map(|lanes| {
                            [(false, false), (true, false), (false, true), (true, true)].map(
                                |(tall, vector_b)| MatmulKind::Broadcast {
                                    tall,
                                    vector_b,
                                    lanes,
                                },
                            )
                        });
                        let tiled = MatmulTile::ALL.into_iter().flat_map(|tile| {
                            [false, true].map(|vec4| MatmulKind::Tiled { tile, vec4 })
                        });
                        // Vulkan's 16x16 tiles on 32- and 64-wide subgroups,
                        // Metal's 8x8 on 32.
                        let cooperative = [(16, 32), (16, 64), (8, 32)]
                            .map(|(tile, lanes)| MatmulKind::Cooperative { tile, lanes });
                        for kind in tiled
                            .chain([MatmulKind::Skinny])
                            .chain(broadcast)
                            .chain(cooperative)
                        {
                            let unused = match kind {
                                // A quantized B is a frozen weight: A is
                                // never transposed against it.
                                _ if matches!(b_dtype, DType::Quant(_)) && trans_a => true,
                                MatmulKind::Tiled { .. } => false,
                                // TT is never on a training path.
                                MatmulKind::Cooperative { .. } => trans_a && trans_b,
                                MatmulKind::Skinny => trans_a,
                                // Sizes that meet every alignment: a vector
                                // variant exists wherever a vector loader does.
                                MatmulKind::Broadcast { vector_b, .. } => {
                                    trans_a && trans_b
                                        || vector_b && !broadcast_vector_b(b_dtype, trans_b, 8, 8)
                                }
                            };
                            if !unused {
                                v.push(Kernel::Matmul {
                                    trans_a,
                                    trans_b,
                                    b_dtype,
                                    epilogue,
                                    kind,
                                });
                            }
                        }
                    }
                }
            }
        }
        for dtype in weight_types {
            v.push(Kernel::RowNorm { dtype });
            v.push(Kernel::Recompose { dtype });
            v.push(Kernel::Widen(dtype));
            v.push(Kernel::Embedding(dtype));
            v.push(Kernel::RmsNormForward(dtype));
            v.push(Kernel::RmsNormBackward(dtype));
        }
        for dtype in quants {
            v.push(Kernel::RowNorm { dtype });
            v.push(Kernel::Recompose { dtype });
            v.push(Kernel::Widen(dtype));
            v.push(Kernel::Embedding(dtype));
        }
        // Tiles under WebGPU's 16 KiB of workgroup memory and under the
        // 32 KiB most adapters give.
        for head_dim_max in [64, 128, 256] {
            let key_rows: std::collections::BTreeSet<u32> = [16 << 10, 32 << 10]
                .into_iter()
                .filter_map(|bytes| attention_tiles(head_dim_max, bytes))
                .map(|(_, key_rows)| key_rows)
                .collect();
            for key_rows in key_rows {
                for pass in [
                    AttentionPass::Forward,
                    AttentionPass::BackwardQuery,
                    AttentionPass::BackwardKeys,
                ] {
                    v.push(Kernel::FlashAttention {
                        pass,
                        head_dim_max,
                        key_rows,
                    });
                }
            }
        }
        v.push(ATTENTION_DELTA);
        v.push(Kernel::Pack16(DType::BF16));
        v.push(Kernel::Pack16(DType::F16));
        use UnaryOp as U;
        for op in [
            U::Scale,
            U::Silu,
            U::GeluTanh,
            U::Square,
            U::Sqrt,
            U::Exp,
            U::Softcap,
            U::SoftcapGrad,
        ] {
            v.push(Kernel::Unary(op));
        }
        use BinaryOp as B;
        for op in [
            B::Add,
            B::Sub,
            B::Mul,
            B::Div,
            B::SiluBackward,
            B::GeluTanhBackward,
            B::Right,
        ] {
            for bc in [Broadcast::None, Broadcast::Row, Broadcast::PerRow] {
                v.push(Kernel::Binary(op, bc));
            }
        }
        v.extend([
            Kernel::AddAssign,
            Kernel::Transpose,
            Kernel::Dropout,
            Kernel::SumRows,
            Kernel::SumCols,
            Kernel::SumSquaresInto,
            Kernel::FactoredNorm,
            Kernel::DoraBackwardPrep,
            Kernel::SoftmaxForward,
            Kernel::SoftmaxBackward,
            Kernel::CrossEntropyRows,
            Kernel::CrossEntropyMean,
            Kernel::CrossEntropyBackward,
            Kernel::AdamW,
            Kernel::Rope,
            Kernel::CopyCols,
            Kernel::SplitHeads,
            Kernel::MergeHeads,
            Kernel::CausalSoftmax,
            Kernel::FmaPeak,
        ]);
        v
    }
}

/// Declares `word` (the array element type) and `fun(i) -> f32`, which reads
/// element `i` of `array` whatever its storage type. 16-bit values sit two per
/// u32, the lower-indexed one in the low half (little-endian packing).
const F16_DECODE: &str = "fn f16_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let exponent = (h >> 10u) & 0x1fu;
    let mantissa = h & 0x3ffu;
    if (exponent == 0u) {
        let v = f32(mantissa) * 5.9604645e-8; // subnormal: mantissa * 2^-24
        return select(v, -v, sign != 0u);
    }
    if (exponent == 31u) {
        return bitcast<f32>(sign | 0x7f800000u | (mantissa << 13u));
    }
    return bitcast<f32>(sign | ((exponent + 112u) << 23u) | (mantissa << 13u));
}
";

/// The fused DoRA epilogue's bindings and function (the plain variant declares neither).
const MATMUL_EPILOGUE: &str = "@group(0) @binding(4) var<storage, read> col_scale: array<f32>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
fn epilogue(v: f32, col: u32) -> f32 {
    var r = v * col_scale[col];
    if (p.has_bias != 0u) {
        r = r + bias[col];
    }
    return r;
}
";

/// The broadcast matmul's B: the `BWord` binding type and `load_b_pair(bi,
/// sk, sn)`, which returns rows k and k+1 of op(B), 8 columns from element
/// `bi`, with element strides `sk` along k and `sn` along n. 16-bit values are
/// read a word (two neighbours) at a time, which needs `bi` even: the
/// dispatcher checks K (B transposed) or N is even. `vector_b` reads wider
/// words where [`broadcast_vector_b`] allows.
fn broadcast_b_loader(b_dtype: DType, trans_b: bool, vector_b: bool) -> String {
    let sixteen_bit = matches!(b_dtype, DType::BF16 | DType::F16);
    match (b_dtype, trans_b, vector_b) {
        // A transposed 16-bit B: one word holds k and k+1 of a column already.
        (_, true, _) if sixteen_bit => {
            weight_loader("BWord", "load_b", "b", b_dtype) + COLUMN_PAIR_LOADER
        }
        (DType::F32, true, true) => format!(
            "alias BWord = vec2<f32>;\nfn unpack_pair(v: vec2<f32>) -> vec2<f32> {{ return v; }}\n{COLUMN_PAIR_LOADER}"
        ),
        (_, false, false) if sixteen_bit => format!(
            "{}// b[k*N + n]: one word holds columns n and n+1.
fn load_b_pair(bi: u32, sk: u32, sn: u32) -> BPair {{
    let w = bi >> 1u;
    let v = (bi + sk) >> 1u;
    return BPair(
        vec4<f32>(unpack_pair(b[w]), unpack_pair(b[w + 1u])),
        vec4<f32>(unpack_pair(b[w + 2u]), unpack_pair(b[w + 3u])),
        vec4<f32>(unpack_pair(b[v]), unpack_pair(b[v + 1u])),
        vec4<f32>(unpack_pair(b[v + 2u]), unpack_pair(b[v + 3u])),
    );
}}
",
            weight_loader("BWord", "load_b", "b", b_dtype)
        ),
        (_, false, true) if sixteen_bit => format!(
            "alias BWord = vec4<u32>;
{}// b[k*N + n], N % 8 == 0: a row's 8 columns are one vec4 of 16-bit pairs.
fn load_b_pair(bi: u32, sk: u32, sn: u32) -> BPair {{
    let r0 = b[bi >> 3u];
    let r1 = b[(bi + sk) >> 3u];
    return BPair(
        vec4<f32>(unpack_pair(r0.x), unpack_pair(r0.y)),
        vec4<f32>(unpack_pair(r0.z), unpack_pair(r0.w)),
        vec4<f32>(unpack_pair(r1.x), unpack_pair(r1.y)),
        vec4<f32>(unpack_pair(r1.z), unpack_pair(r1.w)),
    );
}}
",
            unpack_pair_fn(b_dtype)
        ),
        (DType::F32, false, true) => "alias BWord = vec4<f32>;
// b[k*N + n], N % 4 == 0: a row's 8 columns are two whole vec4s.
fn load_b_pair(bi: u32, sk: u32, sn: u32) -> BPair {
    let w = bi >> 2u;
    let v = (bi + sk) >> 2u;
    return BPair(b[w], b[w + 1u], b[v], b[v + 1u]);
}
"
        .to_string(),
        (DType::F32 | DType::Quant(_), _, false) => weight_loader("BWord", "load_b", "b", b_dtype)
            + "fn load_b_pair(bi: u32, sk: u32, sn: u32) -> BPair {
    let j = bi + sk;
    return BPair(
        vec4<f32>(load_b(bi), load_b(bi + sn), load_b(bi + 2u * sn), load_b(bi + 3u * sn)),
        vec4<f32>(load_b(bi + 4u * sn), load_b(bi + 5u * sn), load_b(bi + 6u * sn), load_b(bi + 7u * sn)),
        vec4<f32>(load_b(j), load_b(j + sn), load_b(j + 2u * sn), load_b(j + 3u * sn)),
        vec4<f32>(load_b(j + 4u * sn), load_b(j + 5u * sn), load_b(j + 6u * sn), load_b(j + 7u * sn)),
    );
}
",
        _ => unreachable!("integer tensors are never weight operands"),
    }
}

/// `load_b_pair` for a transposed B whose words hold k and k+1 of a column
/// (`unpack_pair` opens one: two 16-bit values, or a `vec2<f32>` as it is).
const COLUMN_PAIR_LOADER: &str = "// b[n*K + k], K even: one word holds k and k+1 of a column.
fn load_b_pair(bi: u32, sk: u32, sn: u32) -> BPair {
    let w = bi >> 1u;
    let s = sn >> 1u;
    let c0 = unpack_pair(b[w]);
    let c1 = unpack_pair(b[w + s]);
    let c2 = unpack_pair(b[w + 2u * s]);
    let c3 = unpack_pair(b[w + 3u * s]);
    let c4 = unpack_pair(b[w + 4u * s]);
    let c5 = unpack_pair(b[w + 5u * s]);
    let c6 = unpack_pair(b[w + 6u * s]);
    let c7 = unpack_pair(b[w + 7u * s]);
    return BPair(
        vec4<f32>(c0.x, c1.x, c2.x, c3.x),
        vec4<f32>(c4.x, c5.x, c6.x, c7.x),
        vec4<f32>(c0.y, c1.y, c2.y, c3.y),
        vec4<f32>(c4.y, c5.y, c6.y, c7.y),
    );
}
";

/// f32 -> bf16 bits, round to nearest even (NaN stays NaN).
const BF16_ENCODE: &str = "fn narrow(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return (b >> 16u) | 0x40u;
    }
    return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}
";

/// f32 -> f16 bits, round to nearest even, with subnormals, overflow to inf and NaN.
const F16_ENCODE: &str = "fn narrow(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    let sign = (b >> 16u) & 0x8000u;
    let mant = b & 0x7fffffu;
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return sign | 0x7e00u;
    }
    let e = i32((b >> 23u) & 0xffu) - 112;
    if (e >= 31) {
        return sign | 0x7c00u;
    }
    if (e <= 0) {
        if (e < -10) {
            return sign;
        }
        let m = mant | 0x800000u;
        let shift = u32(14 - e);
        var h = m >> shift;
        let rem = m & ((1u << shift) - 1u);
        let half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (h & 1u) == 1u)) {
            h = h + 1u;
        }
        return sign | h;
    }
    var h = (u32(e) << 10u) | (mant >> 13u);
    let rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) == 1u)) {
        h = h + 1u;
    }
    return sign | h;
}
";

fn weight_loader(word: &str, fun: &str, array: &str, dtype: DType) -> String {
    match dtype {
        DType::F32 => {
            format!("alias {word} = f32;\nfn {fun}(i: u32) -> f32 {{ return {array}[i]; }}\n")
        }
        DType::BF16 => format!(
            "alias {word} = u32;\nfn {fun}(i: u32) -> f32 {{\n    let v = {array}[i >> 1u];\n    \
             return bitcast<f32>(select(v << 16u, v & 0xffff0000u, (i & 1u) == 1u));\n}}\n{}",
            unpack_pair_fn(dtype)
        ),
        // Decoded with integer ops: unpack2x16float needs a capability some GL drivers lack.
        DType::F16 => format!(
            "alias {word} = u32;\nfn {fun}(i: u32) -> f32 {{\n    \
             return f16_to_f32(({array}[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu);\n}}\n{}",
            unpack_pair_fn(dtype)
        ),
        DType::Quant(q) => format!(
            "alias {word} = u32;\nfn q_word(word: u32) -> u32 {{ return {array}[word]; }}\n\
             fn {fun}(i: u32) -> f32 {{ return dequant_{}(i); }}\n{F16_DECODE}{QUANT}",
            q.name()
        ),
        DType::I32 => unreachable!("integer tensors are never weight operands"),
    }
}

/// `unpack_pair(word)`: the two 16-bit values of a word, low half first.
fn unpack_pair_fn(dtype: DType) -> String {
    match dtype {
        DType::BF16 => "fn unpack_pair(v: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(v << 16u), bitcast<f32>(v & 0xffff0000u));
}
"
        .to_string(),
        DType::F16 => format!(
            "fn unpack_pair(v: u32) -> vec2<f32> {{
    return vec2<f32>(f16_to_f32(v & 0xffffu), f16_to_f32(v >> 16u));
}}
{F16_DECODE}"
        ),
        _ => unreachable!("only 16-bit words hold pairs"),
    }
}

/// GELU (tanh approximation) and its derivative, through common.wgsl's
/// `tanh_clamped` (no backend's tanh overflows to NaN for large |x|).
const GELU_TANH: &str = "
const GELU_C: f32 = 0.7978845608028654; // √(2/π)
fn gelu_tanh_t(x: f32) -> f32 {
    return tanh_clamped(GELU_C * (x + 0.044715 * x * x * x));
}
fn gelu_tanh(x: f32) -> f32 { return 0.5 * x * (1.0 + gelu_tanh_t(x)); }
fn gelu_tanh_grad(x: f32) -> f32 {
    let t = gelu_tanh_t(x);
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * 0.044715 * x * x);
}
";

fn elementwise_header(unary: UnaryOp, binary: BinaryOp, bc: Broadcast, w: DType) -> String {
    let unary = match unary {
        UnaryOp::Scale => "p.alpha * x",
        UnaryOp::Silu => "x / (1.0 + exp(-x))",
        UnaryOp::GeluTanh => "gelu_tanh(x)",
        UnaryOp::Square => "x * x",
        UnaryOp::Sqrt => "sqrt(x)",
        UnaryOp::Exp => "exp(x)",
        UnaryOp::Softcap => "p.alpha * tanh_clamped(x / p.alpha)",
        UnaryOp::SoftcapGrad => "1.0 - (x / p.alpha) * (x / p.alpha)",
    };
    let binary = match binary {
        BinaryOp::Add => "a + b",
        BinaryOp::Sub => "a - b",
        BinaryOp::Mul => "a * b",
        BinaryOp::Div => "a / b",
        BinaryOp::SiluBackward => "a * silu_grad(b)",
        BinaryOp::GeluTanhBackward => "a * gelu_tanh_grad(b)",
        BinaryOp::Right => "b",
    };
    let index = match bc {
        Broadcast::None => "i",
        Broadcast::Row => "i % p.cols",
        Broadcast::PerRow => "i / p.cols",
    };
    format!(
        "fn unary(x: f32) -> f32 {{ return {unary}; }}\n\
         fn binary(a: f32, b: f32) -> f32 {{ return {binary}; }}\n\
         fn b_index(i: u32) -> u32 {{ return {index}; }}\n\
         fn silu_grad(x: f32) -> f32 {{ let s = 1.0 / (1.0 + exp(-x)); return s * (1.0 + x * (1.0 - s)); }}\n{GELU_TANH}{}{}",
        weight_loader("WWord", "load_w", "w", w),
        if w == DType::F16 { F16_ENCODE } else { BF16_ENCODE },
    )
}
