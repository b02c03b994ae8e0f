//! Matrix products C = alpha·op(A)·op(B) + beta·C, batched, with either
//! operand transposed, B of any float dtype, and an optional epilogue (a
//! per-column scale and bias): the tiled kernel (matmul.wgsl), the untiled
//! one for a few rows (matmul_skinny.wgsl), and the register-tiled one for
//! CPU-emulated devices (matmul_broadcast.wgsl), all around matmul_io.wgsl.

use super::params::{kernel_params, Params};
use super::{shared, Access, Family, Kernel, ParamsLayout};
use crate::dtype::DType;
use Access::{Read, ReadWrite};

const MATMUL_IO: &str = include_str!("../../../shaders/matmul_io.wgsl");
const MATMUL: &str = include_str!("../../../shaders/matmul.wgsl");
const MATMUL_SKINNY: &str = include_str!("../../../shaders/matmul_skinny.wgsl");
const MATMUL_BROADCAST: &str = include_str!("../../../shaders/matmul_broadcast.wgsl");

/// Which matmul kernel computes a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKind {
    /// Workgroup-memory tiles (matmul.wgsl): real GPUs.
    Tiled,
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
    fn header(&self) -> String {
        let Matmul {
            trans_a,
            trans_b,
            b_dtype,
            epilogue,
            kind,
        } = *self;
        format!(
            "const TRANS_A: bool = {trans_a};\nconst TRANS_B: bool = {trans_b};\n{MATMUL_IO}{}{}{}",
            match kind {
                MatmulKind::Broadcast { vector_b, .. } => {
                    broadcast_b_loader(b_dtype, trans_b, vector_b)
                }
                _ => shared::weight_loader("BWord", "load_b", "b", b_dtype),
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
                _ => String::new(),
            }
        )
    }
    fn body(&self) -> &'static str {
        match self.kind {
            MatmulKind::Tiled => MATMUL,
            MatmulKind::Skinny => MATMUL_SKINNY,
            MatmulKind::Broadcast { .. } => MATMUL_BROADCAST,
        }
    }
}

pub(super) fn variants() -> Vec<Kernel> {
    let mut v = Vec::new();
    for trans_a in [false, true] {
        for trans_b in [false, true] {
            for b_dtype in super::norm::weight_dtypes() {
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
                    for kind in [MatmulKind::Tiled, MatmulKind::Skinny]
                        .into_iter()
                        .chain(broadcast)
                    {
                        let unused = match kind {
                            // A quantized B is a frozen weight: A is
                            // never transposed against it.
                            _ if matches!(b_dtype, DType::Quant(_)) && trans_a => true,
                            MatmulKind::Tiled => false,
                            MatmulKind::Skinny => trans_a,
                            // Sizes that meet every alignment: a vector
                            // variant exists wherever a vector loader does.
                            MatmulKind::Broadcast { vector_b, .. } => {
                                trans_a && trans_b
                                    || vector_b && !broadcast_vector_b(b_dtype, trans_b, 8, 8)
                            }
                        };
                        if !unused {
                            v.push(
                                Matmul {
                                    trans_a,
                                    trans_b,
                                    b_dtype,
                                    epilogue,
                                    kind,
                                }
                                .into(),
                            );
                        }
                    }
                }
            }
        }
    }
    v
}

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
            shared::weight_loader("BWord", "load_b", "b", b_dtype) + COLUMN_PAIR_LOADER
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
            shared::weight_loader("BWord", "load_b", "b", b_dtype)
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
            shared::unpack_pair(b_dtype)
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
        (DType::F32 | DType::Quant(_), _, false) => shared::weight_loader("BWord", "load_b", "b", b_dtype)
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
