//! Elementwise kernels (elementwise.wgsl): unary and binary maps with
//! broadcasting, in-place accumulation, widening to f32 and packing to 16
//! bits, 2-D transpose, dropout; and copies.

use super::params::{kernel_params, Params};
use super::{groups_for_elements, launch, rows_cols, shared};
use super::{Access, Family, Kernel, ParamsLayout};
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::{numel, Tensor};
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elementwise {
    Unary(UnaryOp),
    Binary(BinaryOp, Broadcast),
    AddAssign,
    /// Any float storage type -> f32 (blocks decoded).
    Widen(DType),
    Transpose,
    Dropout,
    /// f32 -> bf16 or f16, packed two per word.
    Pack16(DType),
}

kernel_params! {
    pub(crate) struct ElementwiseParams {
        n: u32,
        cols: u32,
        alpha: f32,
        beta: f32,
        seed: u32,
    }
}

impl Family for Elementwise {
    fn entry(&self) -> &'static str {
        match self {
            Elementwise::Unary(_) => "map_unary",
            Elementwise::Binary(..) => "map_binary",
            Elementwise::AddAssign => "add_assign",
            Elementwise::Widen(_) => "widen",
            Elementwise::Transpose => "transpose2d",
            Elementwise::Dropout => "dropout",
            Elementwise::Pack16(_) => "pack16",
        }
    }
    fn bindings(&self) -> &'static [(u32, Access)] {
        match self {
            Elementwise::Binary(..) => &[(1, Read), (2, Read), (3, ReadWrite)],
            Elementwise::Widen(_) => &[(3, ReadWrite), (4, Read)],
            Elementwise::Pack16(_) => &[(1, Read), (5, ReadWrite)],
            Elementwise::Unary(_)
            | Elementwise::AddAssign
            | Elementwise::Transpose
            | Elementwise::Dropout => &[(1, Read), (3, ReadWrite)],
        }
    }
    fn params(&self) -> ParamsLayout {
        ElementwiseParams::layout()
    }
    fn header(&self) -> String {
        let (unary, binary, bc, w) = match *self {
            Elementwise::Unary(op) => (op, BinaryOp::Add, Broadcast::None, DType::F32),
            Elementwise::Binary(op, bc) => (UnaryOp::Scale, op, bc, DType::F32),
            Elementwise::Widen(w) | Elementwise::Pack16(w) => {
                (UnaryOp::Scale, BinaryOp::Add, Broadcast::None, w)
            }
            Elementwise::AddAssign | Elementwise::Transpose | Elementwise::Dropout => {
                (UnaryOp::Scale, BinaryOp::Add, Broadcast::None, DType::F32)
            }
        };
        header(unary, binary, bc, w)
    }
    fn body(&self) -> &'static str {
        include_str!("elementwise.wgsl")
    }
}

/// `unary(x)`, `binary(a, b)` and `b_index(i)` for the variant, the weight
/// loader of the widened type, and the narrowing of the packed one.
fn header(unary: UnaryOp, binary: BinaryOp, bc: Broadcast, w: DType) -> String {
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
         fn b_index(i: u32) -> u32 {{ return {index}; }}\n{}{}{}",
        include_str!("activations.wgsl"),
        shared::weight_loader("WWord", "load_w", "w", w),
        if w == DType::F16 {
            shared::F16_ENCODE
        } else {
            shared::BF16_ENCODE
        },
    )
}

pub(super) fn variants() -> Vec<Kernel> {
    use BinaryOp as B;
    use UnaryOp as U;
    let unary = [
        U::Scale,
        U::Silu,
        U::GeluTanh,
        U::Square,
        U::Sqrt,
        U::Exp,
        U::Softcap,
        U::SoftcapGrad,
    ]
    .map(Elementwise::Unary);
    let binary = [
        B::Add,
        B::Sub,
        B::Mul,
        B::Div,
        B::SiluBackward,
        B::GeluTanhBackward,
        B::Right,
    ]
    .into_iter()
    .flat_map(|op| {
        [Broadcast::None, Broadcast::Row, Broadcast::PerRow].map(|bc| Elementwise::Binary(op, bc))
    });
    let widen = super::shared::weight_dtypes().map(Elementwise::Widen);
    unary
        .into_iter()
        .chain(binary)
        .chain(widen)
        .chain([
            Elementwise::Pack16(DType::BF16),
            Elementwise::Pack16(DType::F16),
            Elementwise::AddAssign,
            Elementwise::Transpose,
            Elementwise::Dropout,
        ])
        .map(Kernel::from)
        .collect()
}

fn params(n: usize, cols: usize, alpha: f32, seed: u32) -> ElementwiseParams {
    ElementwiseParams {
        n: n as u32,
        cols: cols as u32,
        alpha,
        beta: 0.0,
        seed,
    }
}

/// op(x) elementwise on an f32 tensor; `alpha` is the scale or the cap.
pub(crate) fn unary(x: &Tensor, op: UnaryOp, alpha: f32) -> Result<Tensor> {
    x.expect_f32("elementwise op", "input")?;
    let out = Tensor::empty(x.gpu(), x.shape(), DType::F32)?;
    let n = x.numel();
    let p = params(n, x.last_dim(), alpha, 0);
    launch(
        Elementwise::Unary(op),
        &p,
        &[x, &out],
        groups_for_elements(n),
    )?;
    Ok(out)
}

/// The row length the kernels index `b` by: one value per row of `shape`,
/// or, for a one-element `b` broadcast per row, one value for everything.
fn broadcast_cols(shape: &[usize], b: &Tensor, bc: Broadcast) -> usize {
    match bc {
        Broadcast::PerRow if b.numel() == 1 => numel(shape).max(1),
        _ => shape.last().copied().unwrap_or(1),
    }
}

/// op(a, b) elementwise, `b` indexed as `bc` says.
pub(crate) fn binary(a: &Tensor, b: &Tensor, op: BinaryOp, bc: Broadcast) -> Result<Tensor> {
    let out = Tensor::empty(a.gpu(), a.shape(), DType::F32)?;
    let n = a.numel();
    let p = params(n, broadcast_cols(a.shape(), b, bc), 1.0, 0);
    launch(
        Elementwise::Binary(op, bc),
        &p,
        &[a, b, &out],
        groups_for_elements(n),
    )?;
    Ok(out)
}

/// Expands `b` (broadcast as `bc`) to `shape`.
pub(crate) fn expand(b: &Tensor, shape: &[usize], bc: Broadcast) -> Result<Tensor> {
    let out = Tensor::empty(b.gpu(), shape, DType::F32)?;
    let n = out.numel();
    let p = params(n, broadcast_cols(shape, b, bc), 1.0, 0);
    launch(
        Elementwise::Binary(BinaryOp::Right, bc),
        &p,
        &[b, b, &out],
        groups_for_elements(n),
    )?;
    Ok(out)
}

/// acc += alpha * x, in place, for two f32 tensors of one shape.
pub(crate) fn add_assign(acc: &Tensor, x: &Tensor, alpha: f32) -> Result<()> {
    let n = acc.numel();
    let p = params(n, 1, alpha, 0);
    launch(
        Elementwise::AddAssign,
        &p,
        &[x, acc],
        groups_for_elements(n),
    )
}

/// A copy of `x` in a buffer of its own.
pub(crate) fn copy(x: &Tensor) -> Result<Tensor> {
    let out = Tensor::empty(x.gpu(), x.shape(), x.dtype())?;
    x.gpu()
        .copy(x.buf(), 0, out.buf(), 0, x.dtype().storage_bytes(x.numel()));
    Ok(out)
}

/// A 16-bit or block-quantized `x` widened to f32.
pub(crate) fn widen(x: &Tensor) -> Result<Tensor> {
    let out = Tensor::empty(x.gpu(), x.shape(), DType::F32)?;
    let n = x.numel();
    let (_, cols) = rows_cols(x);
    let p = params(n, cols, 1.0, 0);
    launch(
        Elementwise::Widen(x.dtype()),
        &p,
        &[&out, x],
        groups_for_elements(n),
    )?;
    Ok(out)
}

/// An f32 `x` rounded to nearest even into `dtype` (bf16 or f16).
pub(crate) fn pack16(x: &Tensor, dtype: DType) -> Result<Tensor> {
    let out = Tensor::empty(x.gpu(), x.shape(), dtype)?;
    let n = x.numel();
    let p = params(n, 1, 1.0, 0);
    launch(
        Elementwise::Pack16(dtype),
        &p,
        &[x, &out],
        groups_for_elements(n.div_ceil(2)),
    )?;
    Ok(out)
}

/// The transpose of `x` seen as [rows, cols]: [cols, rows].
pub(crate) fn transpose(x: &Tensor, rows: usize, cols: usize) -> Result<Tensor> {
    let out = Tensor::empty(x.gpu(), &[cols, rows], DType::F32)?;
    let n = rows * cols;
    let p = params(n, cols, 1.0, 0);
    launch(
        Elementwise::Transpose,
        &p,
        &[x, &out],
        groups_for_elements(n),
    )?;
    Ok(out)
}

/// Inverted dropout of an f32 `x`: the mask is a pure function of (`seed`,
/// element index).
pub(crate) fn dropout(x: &Tensor, p: f32, seed: u32) -> Result<Tensor> {
    x.expect_f32("dropout", "input")?;
    let out = Tensor::empty(x.gpu(), x.shape(), DType::F32)?;
    let n = x.numel();
    let params = params(n, 1, p, seed);
    launch(
        Elementwise::Dropout,
        &params,
        &[x, &out],
        groups_for_elements(n),
    )?;
    Ok(out)
}

impl Tensor {
    /// Downloads the values as f32 (16-bit types are widened on the host,
    /// blocks decoded on the GPU by the kernels' own decoder, which is why
    /// this method lives here and not in `tensor`).
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        if let DType::Quant(_) = self.dtype() {
            return widen(self)?.to_vec_f32();
        }
        self.download_f32()
    }
}
