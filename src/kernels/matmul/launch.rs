//! The matmul's launchers: the plan of one product (sizes, batching), the
//! kernel the dispatcher picks for it, and the dispatch. `MatmulKind::serves`
//! is the rule both the pick here and the variant list (`variants`) follow.

use super::tune::{tile_for, ShapeClass};
use super::{
    broadcast_lanes, broadcast_vector_b, tiled_vec4, Matmul, MatmulKind, MatmulParams, MatmulTile,
};
use crate::dtype::DType;
use crate::error::{arg_err, shape_err, Result};
use crate::gpu::cooperative::{CooperativeShape, CooperativeState};
use crate::gpu::{Gpu, MatmulKernels};
use crate::kernels::launch;
use crate::tensor::Tensor;

/// Which operands are transposed: `NT` is `A·Bᵀ`, the layout of `x·Wᵀ` with a
/// Hugging Face `[out, in]` weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transpose {
    NN,
    NT,
    TN,
    TT,
}

impl Transpose {
    pub(crate) fn flags(self) -> (bool, bool) {
        match self {
            Transpose::NN => (false, false),
            Transpose::NT => (false, true),
            Transpose::TN => (true, false),
            Transpose::TT => (true, true),
        }
    }
}

/// Products with at most this many rows of A use the untiled kernel.
const SKINNY_MAX_ROWS: usize = 8;

/// The sizes of one product, after checking the operands fit.
struct Plan {
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    /// B is 2-D and shared by every batch (A's leading dims fold into M).
    shared_b: bool,
    out_shape: Vec<usize>,
}

fn plan(a: &Tensor, b: &Tensor, t: Transpose) -> Result<Plan> {
    let (ta, tb) = t.flags();
    let (sa, sb) = (a.shape(), b.shape());
    if sa.len() < 2 || sb.len() < 2 || sb.len() > 3 {
        shape_err!("matmul {t:?}: A {sa:?} and B {sb:?} must be matrices or batches of matrices");
    }
    let (a_rows, a_cols) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let (b_rows, b_cols) = (sb[sb.len() - 2], sb[sb.len() - 1]);
    let (m, ka) = if ta {
        (a_cols, a_rows)
    } else {
        (a_rows, a_cols)
    };
    let (kb, n) = if tb {
        (b_cols, b_rows)
    } else {
        (b_rows, b_cols)
    };
    if ka != kb {
        shape_err!("matmul {t:?}: A {sa:?} and B {sb:?} have inner dimensions {ka} and {kb}");
    }
    let lead_a: usize = sa[..sa.len() - 2].iter().product();
    if sb.len() == 2 {
        if ta && sa.len() > 2 {
            shape_err!("matmul {t:?}: a batched transposed A {sa:?} needs a batched B, got {sb:?}");
        }
        // Fold A's leading dims into M: one big product against the shared B.
        let mut out_shape = sa[..sa.len() - 1].to_vec();
        if ta {
            out_shape = vec![m];
        }
        out_shape.push(n);
        return Ok(Plan {
            batch: 1,
            m: m * lead_a,
            k: ka,
            n,
            shared_b: true,
            out_shape,
        });
    }
    if sa.len() != 3 || sa[0] != sb[0] {
        shape_err!("matmul {t:?}: batched A {sa:?} and B {sb:?} need the same leading batch size");
    }
    Ok(Plan {
        batch: sa[0],
        m,
        k: ka,
        n,
        shared_b: false,
        out_shape: vec![sa[0], m, n],
    })
}

/// The broadcast kernel's output block per workgroup, (columns, rows): 8 x 8
/// per invocation (matmul_broadcast.wgsl).
fn broadcast_block(tall: bool, lanes: u32) -> (usize, usize) {
    let (x, y) = broadcast_lanes(tall, lanes);
    (8 * x, 8 * y)
}

/// Outputs narrower than this use tall broadcast groups: a wide group would
/// leave most of its invocations idle.
const BROADCAST_TALL_BELOW_COLS: usize = 256;

/// Products with fewer rows or columns than this stay off the cooperative
/// kernel: most of its (4·tile)² block would be padding.
const COOPERATIVE_MIN: usize = 16;

/// The kernel for one product on a context using `family`, whose broadcast
/// groups are `lanes` invocations, and whose cooperative-matrix kernel (if
/// verified) has `cooperative` tiles. A tiled kernel's tile is a placeholder
/// here; [`tile_for`] picks it.
fn choose_kind(
    (family, lanes): (MatmulKernels, u32),
    cooperative: Option<CooperativeShape>,
    p: &Plan,
    ta: bool,
    tb: bool,
    b_dtype: DType,
) -> MatmulKind {
    let serves = |kind: MatmulKind| kind.serves(ta, tb, b_dtype);
    if let Some(CooperativeShape { tile, lanes }) = cooperative {
        let kind = MatmulKind::Cooperative { tile, lanes };
        if serves(kind) && p.m.min(p.n) >= COOPERATIVE_MIN {
            return kind;
        }
    }
    // The broadcast kernel clamps its 8 columns into [0, N) and reads 16-bit
    // B two neighbours per word.
    let words_align = matches!(b_dtype, DType::F32 | DType::Quant(_))
        || if tb {
            p.k.is_multiple_of(2)
        } else {
            p.n.is_multiple_of(2)
        };
    let tall = p.n < BROADCAST_TALL_BELOW_COLS;
    let (cols, rows) = broadcast_block(tall, lanes);
    let fits_grid = p.m.div_ceil(rows).max(p.n.div_ceil(cols)) <= u16::MAX as usize;
    let broadcast = MatmulKind::Broadcast {
        tall,
        vector_b: broadcast_vector_b(b_dtype, tb, p.k, p.n),
        lanes,
    };
    if family == MatmulKernels::Broadcast
        && serves(broadcast)
        && p.n >= 8
        && words_align
        && fits_grid
    {
        return broadcast;
    }
    // Few rows of A: the tiled kernel would mostly compute padding.
    if serves(MatmulKind::Skinny) && p.m <= SKINNY_MAX_ROWS {
        MatmulKind::Skinny
    } else {
        MatmulKind::Tiled {
            tile: MatmulTile::M64N64,
            vec4: tiled_vec4(ta, tb, p.m, p.k, p.n),
        }
    }
}

/// Workgroups covering the product with `kind`.
fn workgroups(kind: MatmulKind, p: &Plan) -> [u32; 3] {
    let (cols, rows) = match kind {
        MatmulKind::Skinny => (256, p.m.max(1)),
        MatmulKind::Tiled { tile, .. } => {
            let (rows, cols) = tile.size();
            (cols as usize, rows as usize)
        }
        MatmulKind::Broadcast { tall, lanes, .. } => broadcast_block(tall, lanes),
        MatmulKind::Cooperative { tile, .. } => (4 * tile as usize, 4 * tile as usize),
    };
    [
        p.n.div_ceil(cols) as u32,
        p.m.div_ceil(rows) as u32,
        p.batch as u32,
    ]
}

/// out = alpha·op(A)·op(B) + beta·out, recorded nowhere. `out` is created when None.
pub(crate) fn matmul_raw(
    a: &Tensor,
    b: &Tensor,
    t: Transpose,
    alpha: f32,
    beta: f32,
    out: Option<&Tensor>,
) -> Result<Tensor> {
    matmul_epilogue(a, b, t, alpha, beta, out, None)
}

/// The cooperative shape products may use on `gpu`: `None` unless the
/// self-test has passed. The first call on a context that offers the path
/// runs the self-test (and says once if it failed).
fn cooperative_shape(gpu: &Gpu) -> Option<CooperativeShape> {
    match gpu.cooperative_state() {
        CooperativeState::Verified(shape) => Some(shape),
        untested @ CooperativeState::Untested(shape) => {
            if !gpu.move_cooperative_state(&untested, CooperativeState::Testing(shape)) {
                return None; // another thread is testing it
            }
            let kind = MatmulKind::Cooperative {
                tile: shape.tile,
                lanes: shape.lanes,
            };
            let testing = CooperativeState::Testing(shape);
            match self_test(gpu, kind) {
                Ok(worst) => {
                    log::info!(
                        "cooperative matrices on {}: {}×{} tiles match the f32 kernels \
                         (largest difference {worst:.1e} of the output's range)",
                        gpu.adapter_name(),
                        shape.tile,
                        shape.tile
                    );
                    gpu.move_cooperative_state(&testing, CooperativeState::Verified(shape));
                    Some(shape)
                }
                Err(why) => {
                    log::warn!(
                        "cooperative matrices on {} failed their self-test ({why}); \
                         products stay on the f32 kernels",
                        gpu.adapter_name()
                    );
                    gpu.move_cooperative_state(&testing, CooperativeState::Failed);
                    None
                }
            }
        }
        _ => None,
    }
}

/// Largest |candidate − reference| relative to the reference's largest
/// magnitude that the cooperative kernel may show: its operands are rounded
/// to f16 (relative error 2⁻¹¹ each), so a correct kernel stays near 1e-3
/// on the self-test's sizes, while a misplaced tile or element is off by
/// the order of the values themselves.
const SELF_TEST_TOLERANCE: f32 = 1e-2;

/// Runs `candidate` against the f32 tiled kernel on the same device, on
/// products with partial blocks in every dimension, each transpose the
/// training paths use, f32 and bf16 B, and the epilogue with beta ≠ 0.
/// Returns the worst relative difference, or why the candidate is unusable
/// (a difference past [`SELF_TEST_TOLERANCE`], or a device error).
pub fn self_test(gpu: &Gpu, candidate: MatmulKind) -> std::result::Result<f32, String> {
    // wgpu's error scopes are per thread; the whole test runs on this one.
    // Every kind of error is caught: an experimental feature may fail in
    // the driver (internal) as well as in validation.
    let device = gpu.device();
    let scopes = [
        wgpu::ErrorFilter::Validation,
        wgpu::ErrorFilter::OutOfMemory,
        wgpu::ErrorFilter::Internal,
    ]
    .map(|filter| device.push_error_scope(filter));
    let result = self_test_products(gpu, candidate);
    let mut device_error = None;
    for scope in scopes.into_iter().rev() {
        device_error = device_error.or(pollster::block_on(scope.pop()));
    }
    match (result, device_error) {
        (_, Some(e)) => Err(format!(
            "device error: {}",
            e.to_string().lines().next().unwrap_or("")
        )),
        (Err(e), None) => Err(e.to_string()),
        (Ok(worst), None) if worst <= SELF_TEST_TOLERANCE => Ok(worst),
        (Ok(worst), None) => Err(format!(
            "largest difference {worst:.2e} of the output's range, over {SELF_TEST_TOLERANCE:.0e}"
        )),
    }
}

fn self_test_products(gpu: &Gpu, candidate: MatmulKind) -> Result<f32> {
    use Transpose::*;
    // Partial blocks in every dimension; K even so the broadcast kernel
    // (a stand-in candidate in the tests) may read 16-bit B in pairs.
    let (m, k, n) = (70, 46, 83);
    // A fixed pseudo-random sequence in [-1, 1).
    let mut state = 0x9e37_79b9_u32;
    let mut values = |count: usize| -> Vec<f32> {
        (0..count)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect()
    };
    let mut worst = 0.0f32;
    for (t, b_dtype, with_epilogue) in [
        (NN, DType::F32, false),
        (NT, DType::F32, false),
        (TN, DType::F32, false),
        (NT, DType::BF16, true),
    ] {
        let a_shape = if t == TN { [k, m] } else { [m, k] };
        let b_shape = if t == NT { [n, k] } else { [k, n] };
        let a = Tensor::from_f32(gpu, &values(m * k), &a_shape)?;
        let b = Tensor::from_f32_as(gpu, &values(k * n), &b_shape, b_dtype)?;
        let c0 = values(m * n);
        let scale = Tensor::from_f32(gpu, &values(n), &[n])?;
        let bias = Tensor::from_f32(gpu, &values(n), &[n])?;
        let run = |kind: MatmulKind| -> Result<Vec<f32>> {
            let out = Tensor::from_f32(gpu, &c0, &[m, n])?;
            let epilogue = with_epilogue.then_some(Epilogue {
                col_scale: &scale,
                bias: Some(&bias),
            });
            launch_product(&a, &b, t, 0.5, 0.25, Some(&out), epilogue, Some(kind))?;
            out.to_vec_f32()
        };
        let reference = run(MatmulKind::Tiled {
            tile: MatmulTile::M64N64,
            vec4: false,
        })?;
        let got = run(candidate)?;
        let range = reference
            .iter()
            .fold(0.0f32, |r, v| r.max(v.abs()))
            .max(1e-6);
        for (g, r) in got.iter().zip(&reference) {
            let d = (g - r).abs() / range;
            // A NaN output fails as an infinite difference.
            worst = worst.max(if d.is_nan() { f32::INFINITY } else { d });
        }
    }
    Ok(worst)
}

/// A per-column scale and optional bias applied to each output after the product.
pub(crate) struct Epilogue<'a> {
    pub col_scale: &'a Tensor,
    pub bias: Option<&'a Tensor>,
}

/// out = scale ⊙ (alpha·op(A)·op(B) + beta·out) + bias, recorded nowhere.
pub(crate) fn matmul_epilogue(
    a: &Tensor,
    b: &Tensor,
    t: Transpose,
    alpha: f32,
    beta: f32,
    out: Option<&Tensor>,
    epilogue: Option<Epilogue>,
) -> Result<Tensor> {
    launch_product(a, b, t, alpha, beta, out, epilogue, None)
}

/// [`matmul_epilogue`] on the kernel the dispatcher picks, or on `forced`
/// (the cooperative self-test compares kernels this way).
#[allow(clippy::too_many_arguments)]
fn launch_product(
    a: &Tensor,
    b: &Tensor,
    t: Transpose,
    alpha: f32,
    beta: f32,
    out: Option<&Tensor>,
    epilogue: Option<Epilogue>,
    forced: Option<MatmulKind>,
) -> Result<Tensor> {
    a.expect_f32("matmul", "A")?;
    if !b.dtype().is_float() {
        arg_err!(
            "matmul: B must be f32, bf16 or f16, got {}",
            b.dtype().name()
        );
    }
    if matches!(b.dtype(), DType::Quant(_)) && matches!(t, Transpose::TN | Transpose::TT) {
        arg_err!(
            "matmul {t:?}: a {} B is a frozen weight, multiplied by an untransposed A",
            b.dtype().name()
        );
    }
    a.expect_same_gpu(b, "matmul")?;
    let p = plan(a, b, t)?;
    let out = match out {
        Some(o) if o.shape() == p.out_shape.as_slice() && o.dtype() == DType::F32 => o.clone(),
        Some(o) => shape_err!(
            "matmul {t:?}: output is {:?}, expected {:?}",
            o.shape(),
            p.out_shape
        ),
        None => Tensor::empty(a.gpu(), &p.out_shape, DType::F32)?,
    };
    let (ta, tb) = t.flags();
    let params = MatmulParams {
        m: p.m as u32,
        n: p.n as u32,
        k: p.k as u32,
        stride_a: (p.m * p.k) as u32,
        stride_b: if p.shared_b { 0 } else { (p.k * p.n) as u32 },
        stride_c: (p.m * p.n) as u32,
        alpha,
        beta,
        has_bias: epilogue.as_ref().is_some_and(|e| e.bias.is_some()) as u32,
    };
    if let Some(e) = &epilogue {
        for (t, what) in [(Some(e.col_scale), "column scale"), (e.bias, "bias")] {
            if let Some(t) = t {
                if t.shape() != [p.n] || t.dtype() != DType::F32 {
                    shape_err!(
                        "matmul epilogue: {what} is {:?} {}, expected [{}] f32",
                        t.shape(),
                        t.dtype().name(),
                        p.n
                    );
                }
            }
        }
    }
    let gpu = a.gpu();
    let family = (gpu.matmul_kernels(), gpu.broadcast_lanes());
    let mut kind = match forced {
        Some(kind) => kind,
        None => choose_kind(family, cooperative_shape(gpu), &p, ta, tb, b.dtype()),
    };
    let kernel = |kind| Matmul {
        trans_a: ta,
        trans_b: tb,
        b_dtype: b.dtype(),
        epilogue: epilogue.is_some(),
        kind,
    };
    // Without a bias the scale buffer is bound twice; the kernel never reads it as a bias.
    let extra: Vec<&Tensor> = match &epilogue {
        None => vec![],
        Some(e) => vec![e.col_scale, e.bias.unwrap_or(e.col_scale)],
    };
    if let (None, MatmulKind::Tiled { vec4, .. }) = (forced, kind) {
        let class = ShapeClass {
            trans_a: ta,
            trans_b: tb,
            b_dtype: b.dtype(),
            epilogue: epilogue.is_some(),
            vec4,
            batch: p.batch,
            m: p.m,
            k: p.k,
            n: p.n,
        };
        // Tuning runs write a scratch output, never `out`.
        let mut scratch = None;
        let tile = tile_for(gpu, &class, |tile| {
            let kind = MatmulKind::Tiled { tile, vec4 };
            let scratch = match &scratch {
                Some(t) => t,
                None => scratch.insert(Tensor::empty(gpu, &p.out_shape, DType::F32)?),
            };
            let mut tensors = vec![a, b, scratch];
            tensors.extend(&extra);
            let bufs: Vec<_> = tensors.iter().map(|t| t.buf()).collect();
            let params = MatmulParams {
                beta: 0.0,
                ..params
            };
            gpu.time_dispatch(
                &crate::kernels::Kernel::from(kernel(kind)),
                bytemuck::bytes_of(&params),
                &bufs,
                workgroups(kind, &p),
            )
        })?;
        kind = MatmulKind::Tiled { tile, vec4 };
    }
    let mut tensors = vec![a, b, &out];
    tensors.extend(&extra);
    launch(kernel(kind), &params, &tensors, workgroups(kind, &p))?;
    Ok(out)
}
