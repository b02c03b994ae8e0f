//! The tiles of the workgroup-tiled matmul family (shaders/matmul_tiled.wgsl):
//! their sizes, which ones an adapter's limits allow, the default for a
//! product's shape, and the generated header of each variant.
//!
//! Every tile sums each output in the same order (one fma chain over k from
//! 0, the same 16-deep K-slices, no split-K), so every tile choice gives
//! bit-identical results: tuning picks a speed, never a number.

use crate::tensor::DType;

/// Depth of the K-slices every tile stages (`BK` in matmul_tiled.wgsl).
const BK: u32 = 16;

/// One tile of the tiled matmul: `rows x cols` outputs per workgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MatmulTile {
    /// 16 x 16 invocations of 8 x 8 outputs: large products.
    M128N128,
    /// 16 x 16 invocations of 4 x 4 outputs: products too small to fill a
    /// GPU with 128 x 128 tiles.
    M64N64,
    /// 16 x 8 invocations of 4 x 8 outputs: few rows, e.g. a rank-r M (the
    /// DoRA backward's dA = (h·B)ᵀ·x).
    M32N128,
    /// 8 x 16 invocations of 8 x 4 outputs: few columns, e.g. a rank-r N
    /// (x·Aᵀ, dB).
    M128N32,
}

impl MatmulTile {
    pub const ALL: [MatmulTile; 4] = [
        MatmulTile::M128N128,
        MatmulTile::M64N64,
        MatmulTile::M32N128,
        MatmulTile::M128N32,
    ];

    /// Outputs per workgroup, (rows, columns).
    pub fn size(self) -> (u32, u32) {
        match self {
            MatmulTile::M128N128 => (128, 128),
            MatmulTile::M64N64 => (64, 64),
            MatmulTile::M32N128 => (32, 128),
            MatmulTile::M128N32 => (128, 32),
        }
    }

    /// Blocks of 4 x 4 outputs per invocation, (rows, columns): 1 or 2 each.
    fn blocks(self) -> (u32, u32) {
        match self {
            MatmulTile::M128N128 => (2, 2),
            MatmulTile::M64N64 => (1, 1),
            MatmulTile::M32N128 => (1, 2),
            MatmulTile::M128N32 => (2, 1),
        }
    }

    /// Invocations per workgroup, (x along columns, y along rows).
    pub fn invocations(self) -> (u32, u32) {
        let ((bm, bn), (rm, rn)) = (self.size(), self.blocks());
        (bn / (4 * rn), bm / (4 * rm))
    }

    /// Bytes of workgroup memory: one K-slice of each operand.
    pub fn workgroup_bytes(self) -> u32 {
        let (bm, bn) = self.size();
        4 * BK * (bm + bn)
    }

    /// Whether a device with `limits` can run this tile.
    pub fn fits(self, limits: &wgpu::Limits) -> bool {
        let (x, y) = self.invocations();
        self.workgroup_bytes() <= limits.max_compute_workgroup_storage_size
            && x * y <= limits.max_compute_invocations_per_workgroup
            && x <= limits.max_compute_workgroup_size_x
            && y <= limits.max_compute_workgroup_size_y
    }

    /// The tiles a device with `limits` can run (64 x 64 fits WebGPU's minimums).
    pub fn candidates(limits: &wgpu::Limits) -> Vec<MatmulTile> {
        MatmulTile::ALL
            .into_iter()
            .filter(|t| t.fits(limits))
            .collect()
    }

    /// The tile for an M x N output (`batch` of them) without tuning: a
    /// narrow tile for rank-sized rows or columns, 128 x 128 where its
    /// workgroups still fill a large GPU, else 64 x 64. Only tiles in
    /// `allowed` are returned (64 x 64 when none of the others is).
    pub fn default_for(m: usize, n: usize, batch: usize, allowed: &[MatmulTile]) -> MatmulTile {
        let groups =
            |(bm, bn): (u32, u32)| m.div_ceil(bm as usize) * n.div_ceil(bn as usize) * batch;
        let preferred = if m <= 32 && n >= 128 {
            MatmulTile::M32N128
        } else if n <= 32 && m >= 128 {
            MatmulTile::M128N32
        } else if groups(MatmulTile::M128N128.size()) >= 128 {
            MatmulTile::M128N128
        } else {
            MatmulTile::M64N64
        };
        if allowed.contains(&preferred) {
            preferred
        } else {
            MatmulTile::M64N64
        }
    }

    /// "128x128" and so on: the name `DORA_MATMUL_TILE` and the tuning cache use.
    pub fn name(self) -> String {
        let (m, n) = self.size();
        format!("{m}x{n}")
    }

    /// The tile named `name` ("128x128", "64x64", "32x128", "128x32").
    pub fn parse(name: &str) -> Option<MatmulTile> {
        MatmulTile::ALL.into_iter().find(|t| t.name() == name)
    }
}

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
/// constants, `AWord` (A's array element) with `load_a`/`load_a4`, and for an
/// f32 B read as vec4s its `BWord`/`load_b`; `load_b4` for every B (`load_b`
/// otherwise comes from the weight loader).
pub(crate) fn header(tile: MatmulTile, vec4: bool, b_dtype: DType) -> String {
    let ((bm, bn), (rm, rn)) = (tile.size(), tile.blocks());
    // A quantized B is staged one element at a time (B_ONE): its decoder is
    // large, and four- or sixteen-element units would inline it that often.
    let quant = matches!(b_dtype, DType::Quant(_));
    let mut s = format!(
        "const BM: u32 = {bm}u;\nconst BN: u32 = {bn}u;\nconst RM: u32 = {rm}u;\nconst RN: u32 = {rn}u;\n\
         const VEC_A: bool = {vec4};\nconst VEC_B: bool = {};\nconst B_ONE: bool = {quant};\n",
        vec4 && !quant
    );
    s += if vec4 {
        "fn load_a(i: u32) -> f32 { return a[i >> 2u][i & 3u]; }\n\
         fn load_a4(i: u32) -> vec4<f32> { return a[i >> 2u]; }\n"
    } else {
        "fn load_a(i: u32) -> f32 { return a[i]; }\n\
         fn load_a4(i: u32) -> vec4<f32> { return vec4<f32>(a[i], a[i + 1u], a[i + 2u], a[i + 3u]); }\n"
    };
    s += if vec4 && b_dtype == DType::F32 {
        "fn load_b4(i: u32) -> vec4<f32> { return b[i >> 2u]; }\n"
    } else {
        "fn load_b4(i: u32) -> vec4<f32> { return vec4<f32>(load_b(i), load_b(i + 1u), load_b(i + 2u), load_b(i + 3u)); }\n"
    };
    s
}

/// `AWord`, A's array element: `vec4<f32>` for the tiled kernel's vector
/// loads, else `f32`.
pub(crate) fn a_word(vec4: bool) -> &'static str {
    if vec4 {
        "alias AWord = vec4<f32>;\n"
    } else {
        "alias AWord = f32;\n"
    }
}

/// An f32 B read as vec4s (the weight loader's f32 `BWord` is a scalar).
pub(crate) const VEC4_F32_B: &str = "alias BWord = vec4<f32>;
fn load_b(i: u32) -> f32 { return b[i >> 2u][i & 3u]; }
";
