//! Elementwise ops (unary and binary with broadcasting), gradient accumulation,
//! copies and dtype widening; their backward rules sit beside each.

use crate::autograd::record;
use crate::error::{shape_err, Result};
use crate::kernels::elementwise::{self as kernels, binary as binary_raw, unary as unary_raw};
use crate::kernels::reduce::{sum_cols, sum_rows};
use crate::kernels::{BinaryOp, Broadcast, UnaryOp};
use crate::tensor::{DType, Tensor};

/// How `b` broadcasts against `a`, or an error naming both shapes.
fn broadcast_kind(a: &Tensor, b: &Tensor, op: &str) -> Result<Broadcast> {
    let (sa, sb) = (a.shape(), b.shape());
    if sa == sb {
        return Ok(Broadcast::None);
    }
    if !sa.is_empty() && sb == [sa[sa.len() - 1]] {
        return Ok(Broadcast::Row);
    }
    if !sa.is_empty()
        && sb.len() == sa.len()
        && sb[..sb.len() - 1] == sa[..sa.len() - 1]
        && sb[sb.len() - 1] == 1
    {
        return Ok(Broadcast::PerRow);
    }
    shape_err!(
        "{op}: cannot broadcast {sb:?} against {sa:?} (same shape, the last dimension, or one value per row)"
    )
}

/// Sums a full-shape gradient down to the shape of a broadcast operand.
fn reduce_to(g: &Tensor, bc: Broadcast, b: &Tensor) -> Result<Tensor> {
    let r = match bc {
        Broadcast::None => return Ok(g.clone()),
        Broadcast::Row => sum_cols(g, 1.0)?,
        Broadcast::PerRow => sum_rows(g, 1.0)?,
    };
    Ok(r.view(b.shape()))
}

fn binary(a: &Tensor, b: &Tensor, op: BinaryOp, name: &'static str) -> Result<Tensor> {
    a.expect_f32(name, "first operand")?;
    b.expect_f32(name, "second operand")?;
    a.expect_same_gpu(b, name)?;
    let bc = broadcast_kind(a, b, name)?;
    let out = binary_raw(a, b, op, bc)?;
    let (sa, sb, so) = (a.clone(), b.clone(), out.clone());
    Ok(record(out, name, &[a, b], move |g, needs| {
        let (ga, gb) = match op {
            BinaryOp::Add => (g.clone(), g.clone()),
            BinaryOp::Sub => (g.clone(), unary_raw(g, UnaryOp::Scale, -1.0)?),
            BinaryOp::Mul => (
                if needs[0] {
                    binary_raw(g, &sb, BinaryOp::Mul, bc)?
                } else {
                    g.clone()
                },
                if needs[1] {
                    binary_raw(g, &sa, BinaryOp::Mul, Broadcast::None)?
                } else {
                    g.clone()
                },
            ),
            BinaryOp::Div => {
                let ga = binary_raw(g, &sb, BinaryOp::Div, bc)?;
                // d(a/b)/db = -(a/b)/b: reduce g*out first, then divide by b (constant along the reduced axis).
                let gb = if needs[1] {
                    let t = reduce_to(
                        &binary_raw(g, &so, BinaryOp::Mul, Broadcast::None)?,
                        bc,
                        &sb,
                    )?;
                    unary_raw(
                        &binary_raw(&t, &sb, BinaryOp::Div, Broadcast::None)?,
                        UnaryOp::Scale,
                        -1.0,
                    )?
                } else {
                    g.clone()
                };
                return Ok(vec![needs[0].then_some(ga), needs[1].then_some(gb)]);
            }
            BinaryOp::SiluBackward | BinaryOp::GeluTanhBackward | BinaryOp::Right => {
                unreachable!("not a differentiable public op")
            }
        };
        let gb = if needs[1] {
            Some(reduce_to(&gb, bc, &sb)?)
        } else {
            None
        };
        Ok(vec![needs[0].then_some(ga), gb])
    }))
}

/// a + b; `b` may have `a`'s shape, its last dimension (a bias) or one value per row.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Add, "add")
}

/// a - b, broadcasting as [`add`].
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Sub, "sub")
}

/// a * b, broadcasting as [`add`].
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Mul, "mul")
}

/// a / b, broadcasting as [`add`].
pub fn div(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Div, "div")
}

/// s * x.
pub fn scale(x: &Tensor, s: f32) -> Result<Tensor> {
    let out = unary_raw(x, UnaryOp::Scale, s)?;
    Ok(record(out, "scale", &[x], move |g, _| {
        Ok(vec![Some(unary_raw(g, UnaryOp::Scale, s)?)])
    }))
}

/// x * sigmoid(x).
pub fn silu(x: &Tensor) -> Result<Tensor> {
    let out = unary_raw(x, UnaryOp::Silu, 1.0)?;
    let saved = x.clone();
    Ok(record(out, "silu", &[x], move |g, _| {
        Ok(vec![Some(binary_raw(
            g,
            &saved,
            BinaryOp::SiluBackward,
            Broadcast::None,
        )?)])
    }))
}

/// GELU with the tanh approximation (PyTorch's `gelu(approximate="tanh")`,
/// Gemma's `gelu_pytorch_tanh`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    let out = unary_raw(x, UnaryOp::GeluTanh, 1.0)?;
    let saved = x.clone();
    Ok(record(out, "gelu_tanh", &[x], move |g, _| {
        Ok(vec![Some(binary_raw(
            g,
            &saved,
            BinaryOp::GeluTanhBackward,
            Broadcast::None,
        )?)])
    }))
}

/// `cap·tanh(x / cap)`: Gemma's final-logit soft-capping.
pub fn softcap(x: &Tensor, cap: f32) -> Result<Tensor> {
    if !(cap.is_finite() && cap > 0.0) {
        shape_err!("softcap: the cap must be a positive number, got {cap}");
    }
    let out = unary_raw(x, UnaryOp::Softcap, cap)?;
    let saved = out.clone();
    Ok(record(out, "softcap", &[x], move |g, _| {
        let slope = unary_raw(&saved, UnaryOp::SoftcapGrad, cap)?;
        Ok(vec![Some(binary_raw(
            g,
            &slope,
            BinaryOp::Mul,
            Broadcast::None,
        )?)])
    }))
}

/// x².
pub fn square(x: &Tensor) -> Result<Tensor> {
    let out = unary_raw(x, UnaryOp::Square, 1.0)?;
    let saved = x.clone();
    Ok(record(out, "square", &[x], move |g, _| {
        let gx = binary_raw(g, &saved, BinaryOp::Mul, Broadcast::None)?;
        Ok(vec![Some(unary_raw(&gx, UnaryOp::Scale, 2.0)?)])
    }))
}

/// √x.
pub fn sqrt(x: &Tensor) -> Result<Tensor> {
    let out = unary_raw(x, UnaryOp::Sqrt, 1.0)?;
    let saved = out.clone();
    Ok(record(out, "sqrt", &[x], move |g, _| {
        let gx = binary_raw(g, &saved, BinaryOp::Div, Broadcast::None)?;
        Ok(vec![Some(unary_raw(&gx, UnaryOp::Scale, 0.5)?)])
    }))
}

/// eˣ.
pub fn exp(x: &Tensor) -> Result<Tensor> {
    let out = unary_raw(x, UnaryOp::Exp, 1.0)?;
    let saved = out.clone();
    Ok(record(out, "exp", &[x], move |g, _| {
        Ok(vec![Some(binary_raw(
            g,
            &saved,
            BinaryOp::Mul,
            Broadcast::None,
        )?)])
    }))
}

/// acc += alpha * x, in place. Not recorded: for gradient and state buffers.
pub fn add_assign(acc: &Tensor, x: &Tensor, alpha: f32) -> Result<()> {
    acc.expect_f32("add_assign", "accumulator")?;
    x.expect_f32("add_assign", "addend")?;
    acc.expect_same_gpu(x, "add_assign")?;
    if acc.shape() != x.shape() {
        shape_err!(
            "add_assign: accumulator {:?} and addend {:?} differ",
            acc.shape(),
            x.shape()
        );
    }
    kernels::add_assign(acc, x, alpha)
}

/// A copy of `x` in a buffer of its own (not recorded).
pub fn copy(x: &Tensor) -> Result<Tensor> {
    kernels::copy(x)
}

/// `x` widened to f32 on the GPU (a copy when already f32). Not recorded.
pub fn to_f32(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::F32 => copy(x),
        DType::I32 => Err(crate::Error::InvalidArgument(
            "to_f32: i32 tensors hold ids, not values".into(),
        )),
        _ => kernels::widen(x),
    }
}

/// The transpose of a 2-D tensor: [rows, cols] -> [cols, rows].
pub fn transpose(x: &Tensor) -> Result<Tensor> {
    x.expect_f32("transpose", "input")?;
    let &[rows, cols] = x.shape() else {
        shape_err!("transpose: needs a 2-D tensor, got {:?}", x.shape());
    };
    let out = kernels::transpose(x, rows, cols)?;
    Ok(record(out, "transpose", &[x], move |g, _| {
        Ok(vec![Some(kernels::transpose(g, cols, rows)?)])
    }))
}

/// Inverted dropout with probability `p`: each element is zeroed with
/// probability p and the rest scaled by 1/(1-p). The mask is a pure function
/// of (`seed`, element index), so the same seed drops the same elements.
pub fn dropout(x: &Tensor, p: f32, seed: u32) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        crate::error::arg_err!("dropout: probability must be in [0, 1), got {p}");
    }
    if p == 0.0 {
        return Ok(x.clone());
    }
    let out = kernels::dropout(x, p, seed)?;
    Ok(record(out, "dropout", &[x], move |g, _| {
        Ok(vec![Some(kernels::dropout(g, p, seed)?)])
    }))
}

/// `x` stored as `dtype` (f32 values rounded to nearest even for bf16/f16).
/// Not recorded: for writing frozen weights.
pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    match (x.dtype(), dtype) {
        (from, to) if from == to => copy(x),
        (DType::F32, DType::BF16 | DType::F16) => kernels::pack16(x, dtype),
        (DType::BF16 | DType::F16 | DType::Quant(_), DType::F32) => to_f32(x),
        (DType::BF16 | DType::F16 | DType::Quant(_), DType::BF16 | DType::F16) => {
            cast(&to_f32(x)?, dtype)
        }
        (from, to) => crate::error::arg_err!("cast: {} cannot become {}", from.name(), to.name()),
    }
}
