//! Matrix products C = alpha·op(A)·op(B) + beta·C, batched, with either
//! operand transposed, B of any float dtype, and an optional epilogue (a
//! per-column scale and bias). The kernels share `matmul_io.wgsl` (operands
//! and parameters) and differ in how they tile: workgroup-memory tiles
//! (`matmul_tiled.wgsl`, real GPUs, in several tile sizes: `tiles.rs`), none
//! for a few rows (`matmul_skinny.wgsl`),
//! register tiles for CPU-emulated devices (`matmul_broadcast.wgsl`, with a
//! `b_pair_*.wgsl` loader of B), cooperative matrices (`matmul_coop.wgsl`).
//! `launch.rs` picks among them for each product, `tune.rs` the tile.

mod launch;
mod tiles;
mod tune;

pub use crate::gpu::MatmulTile;
pub(crate) use launch::{matmul_epilogue, matmul_raw, Epilogue};
pub use launch::{self_test, Transpose};
pub(crate) use tiles::tiled_vec4;

use super::params::{kernel_params, Params};
use super::{shared, Access, Family, Kernel, ParamsLayout};
use crate::dtype::DType;
use crate::gpu::{cooperative, BROADCAST_LANES};
use Access::{Read, ReadWrite};

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
    /// [`crate::gpu::Gpu::broadcast_lanes`]).
    Broadcast {
        tall: bool,
        vector_b: bool,
        lanes: u32,
    },
    /// Cooperative matrices (matmul_coop.wgsl): f16 operands, f32
    /// accumulators, on `tile` x `tile` hardware tiles (16: Vulkan's
    /// `VK_KHR_cooperative_matrix`; 8: Metal's simdgroup matrices), one
    /// subgroup of `lanes` invocations per workgroup. Opt-in, and only after
    /// a self-test on the device (see `launch.rs`).
    Cooperative { tile: u32, lanes: u32 },
}

impl MatmulKind {
    /// Every kind a context can use: the broadcast kernels for each group
    /// size a context takes, the cooperative one for each shape it accepts.
    fn all() -> impl Iterator<Item = MatmulKind> {
        let broadcast = BROADCAST_LANES.into_iter().flat_map(|lanes| {
            [(false, false), (true, false), (false, true), (true, true)].map(|(tall, vector_b)| {
                MatmulKind::Broadcast {
                    tall,
                    vector_b,
                    lanes,
                }
            })
        });
        let cooperative =
            cooperative::SHAPES.map(|(tile, lanes)| MatmulKind::Cooperative { tile, lanes });
        let tiled = MatmulTile::ALL
            .into_iter()
            .flat_map(|tile| [false, true].map(|vec4| MatmulKind::Tiled { tile, vec4 }));
        tiled
            .chain([MatmulKind::Skinny])
            .chain(broadcast)
            .chain(cooperative)
    }

    /// Whether the dispatcher may pick this kind for a product of this
    /// layout and B (the sizes it also needs are checked where it picks):
    /// the rule `launch::choose_kind` and the variant list share.
    pub(crate) fn serves(self, trans_a: bool, trans_b: bool, b_dtype: DType) -> bool {
        match self {
            // A quantized B is a frozen weight: A is never transposed against it.
            _ if matches!(b_dtype, DType::Quant(_)) && trans_a => false,
            MatmulKind::Tiled { .. } => true,
            MatmulKind::Skinny => !trans_a,
            // TT is never on a training path; a vector loader needs a B it
            // can read in vectors at some size (8 x 8 meets every alignment).
            MatmulKind::Broadcast { vector_b, .. } => {
                !(trans_a && trans_b) && (!vector_b || broadcast_vector_b(b_dtype, trans_b, 8, 8))
            }
            MatmulKind::Cooperative { .. } => !(trans_a && trans_b),
        }
    }
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

/// One matmul variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Matmul {
    pub trans_a: bool,
    pub trans_b: bool,
    pub b_dtype: DType,
    /// Scales each output column and adds a bias after the product.
    pub epilogue: bool,
    pub kind: MatmulKind,
}

kernel_params! {
    /// The uniform every matmul kernel reads.
    pub(crate) struct MatmulParams {
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
}

impl Family for Matmul {
    fn entry(&self) -> &'static str {
        "main"
    }
    fn bindings(&self) -> &'static [(u32, Access)] {
        if self.epilogue {
            &[(1, Read), (2, Read), (3, ReadWrite), (4, Read), (5, Read)]
        } else {
            &[(1, Read), (2, Read), (3, ReadWrite)]
        }
    }
    fn params(&self) -> ParamsLayout {
        MatmulParams::layout()
    }
    fn enables(&self) -> &'static str {
        match self.kind {
            MatmulKind::Cooperative { .. } => "enable f16;\nenable wgpu_cooperative_matrix;\n",
            _ => "",
        }
    }
    fn header(&self) -> String {
        let Matmul {
            trans_a,
            trans_b,
            b_dtype,
            epilogue,
            kind,
        } = *self;
        let a = match kind {
            MatmulKind::Tiled { vec4, .. } => tiles::a_word(vec4),
            _ => tiles::a_word(false),
        };
        let b = match kind {
            MatmulKind::Broadcast { vector_b, .. } => {
                broadcast_b_loader(b_dtype, trans_b, vector_b)
            }
            MatmulKind::Tiled { vec4: true, .. } if b_dtype == DType::F32 => {
                tiles::VEC4_F32_B.to_string()
            }
            _ => shared::weight_loader("BWord", "load_b", "b", b_dtype),
        };
        let epilogue = if epilogue {
            include_str!("epilogue.wgsl")
        } else {
            include_str!("no_epilogue.wgsl")
        };
        let tiles = match kind {
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
            MatmulKind::Tiled { tile, vec4 } => tiles::header(tile, vec4, b_dtype),
            MatmulKind::Skinny => String::new(),
        };
        format!(
            "const TRANS_A: bool = {trans_a};\nconst TRANS_B: bool = {trans_b};\n{}{a}{b}{epilogue}{tiles}",
            include_str!("matmul_io.wgsl")
        )
    }
    fn body(&self) -> &'static str {
        match self.kind {
            MatmulKind::Tiled { .. } => include_str!("matmul_tiled.wgsl"),
            MatmulKind::Skinny => include_str!("matmul_skinny.wgsl"),
            MatmulKind::Broadcast { .. } => include_str!("matmul_broadcast.wgsl"),
            MatmulKind::Cooperative { .. } => include_str!("matmul_coop.wgsl"),
        }
    }
}

/// Every variant the dispatcher can pick: each layout, B type and epilogue
/// with each kind that [`MatmulKind::serves`] it.
pub(super) fn variants() -> Vec<Kernel> {
    let mut v = Vec::new();
    for trans_a in [false, true] {
        for trans_b in [false, true] {
            for b_dtype in super::shared::weight_dtypes() {
                for epilogue in [false, true] {
                    for kind in MatmulKind::all().filter(|k| k.serves(trans_a, trans_b, b_dtype)) {
                        let m = Matmul {
                            trans_a,
                            trans_b,
                            b_dtype,
                            epilogue,
                            kind,
                        };
                        v.push(m.into());
                    }
                }
            }
        }
    }
    v
}

/// The broadcast matmul's B: the `BWord` binding type and `load_b_pair(bi,
/// sk, sn)`, which returns rows k and k+1 of op(B), 8 columns from element
/// `bi`, with element strides `sk` along k and `sn` along n. 16-bit values are
/// read a word (two neighbours) at a time, which needs `bi` even: the
/// dispatcher checks K (B transposed) or N is even. `vector_b` reads wider
/// words where [`broadcast_vector_b`] allows.
fn broadcast_b_loader(b_dtype: DType, trans_b: bool, vector_b: bool) -> String {
    let sixteen_bit = matches!(b_dtype, DType::BF16 | DType::F16);
    let elements = || shared::weight_loader("BWord", "load_b", "b", b_dtype);
    match (b_dtype, trans_b, vector_b) {
        // A transposed 16-bit B: one word holds k and k+1 of a column already.
        (_, true, _) if sixteen_bit => elements() + include_str!("b_pair_columns.wgsl"),
        (DType::F32, true, true) => {
            include_str!("b_word_f32_pairs.wgsl").to_string() + include_str!("b_pair_columns.wgsl")
        }
        (_, false, false) if sixteen_bit => elements() + include_str!("b_pair_16bit_rows.wgsl"),
        (_, false, true) if sixteen_bit => {
            shared::unpack_pair(b_dtype) + include_str!("b_pair_16bit_vec4.wgsl")
        }
        (DType::F32, false, true) => include_str!("b_pair_f32_vec4.wgsl").to_string(),
        (DType::F32 | DType::Quant(_), _, false) => {
            elements() + include_str!("b_pair_elements.wgsl")
        }
        _ => unreachable!("integer tensors are never weight operands"),
    }
}
