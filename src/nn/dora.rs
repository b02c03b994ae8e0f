//! A DoRA-adapted linear layer over a frozen base weight, in PEFT's convention:
//!   y = (m / ||W + s·B·A||_row) ⊙ (x·Wᵀ + s·(x·Aᵀ)·Bᵀ) + b
//! The row norm is treated as a constant in backward (paper §4.3).

use super::init::{kaiming_uniform, Rng};
use crate::autograd::no_grad;
use crate::error::{shape_err, Result};
use crate::ops::{self, Transpose};
use crate::tensor::{DType, Tensor};

#[derive(Debug)]
pub struct DoraLinear {
    /// Frozen base weight [out, in]: f32, bf16 or f16.
    pub weight: Tensor,
    /// Frozen base bias [out], never scaled.
    pub bias: Option<Tensor>,
    /// Trainable [r, in].
    pub lora_a: Tensor,
    /// Trainable [out, r].
    pub lora_b: Tensor,
    /// Trainable [out].
    pub magnitude: Tensor,
    /// lora_alpha / r.
    pub scale: f32,
}

impl DoraLinear {
    /// Wraps a frozen linear layer with a fresh adapter: A kaiming-uniform,
    /// B = 0 and m = ||W||_row, so the layer starts equal to the base layer.
    pub fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        rank: usize,
        alpha: f32,
        seed: u64,
    ) -> Result<DoraLinear> {
        let &[out_f, in_f] = weight.shape() else {
            shape_err!(
                "DoraLinear: weight must be 2-D [out, in], got {:?}",
                weight.shape()
            );
        };
        if let Some(b) = &bias {
            if b.shape() != [out_f] {
                shape_err!("DoraLinear: bias is {:?}, expected [{out_f}]", b.shape());
            }
        }
        if rank == 0 {
            shape_err!("DoraLinear: rank must be at least 1");
        }
        let gpu = weight.gpu().clone();
        let mut rng = Rng::new(seed);
        let lora_a = Tensor::param(&gpu, &kaiming_uniform(&mut rng, rank, in_f), &[rank, in_f])?;
        let lora_b = Tensor::param(&gpu, &vec![0.0; out_f * rank], &[out_f, rank])?;
        let magnitude = {
            let _g = no_grad();
            ops::row_norm(&weight)?.into_param_copy()?
        };
        Ok(DoraLinear {
            weight,
            bias,
            lora_a,
            lora_b,
            magnitude,
            scale: alpha / rank as f32,
        })
    }

    /// The row norms ||W + s·B·A|| (no gradient), materialising the direction.
    pub fn direction_norm(&self) -> Result<Tensor> {
        let _g = no_grad();
        let v = ops::to_f32(&self.weight)?;
        ops::matmul_raw(
            &self.lora_b,
            &self.lora_a,
            Transpose::NN,
            self.scale,
            1.0,
            Some(&v),
        )?;
        ops::row_norm(&v)
    }

    /// y for x of shape [..., in].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let base = ops::matmul_ex(x, &self.weight, Transpose::NT)?;
        let xa = ops::matmul_ex(x, &self.lora_a, Transpose::NT)?;
        let low_rank = ops::matmul_ex(&xa, &self.lora_b, Transpose::NT)?;
        let z = ops::add(&base, &ops::scale(&low_rank, self.scale)?)?;
        let c = ops::div(&self.magnitude, &self.direction_norm()?)?;
        let y = ops::mul(&z, &c)?;
        match &self.bias {
            Some(b) => ops::add(&y, b),
            None => Ok(y),
        }
    }

    /// The trainable tensors: A, B, m.
    pub fn parameters(&self) -> Vec<Tensor> {
        vec![
            self.lora_a.clone(),
            self.lora_b.clone(),
            self.magnitude.clone(),
        ]
    }

    /// The merged weight W' = (m / ||W + s·B·A||) ⊙ (W + s·B·A), in f32.
    pub fn merged_weight(&self) -> Result<Tensor> {
        let (merged, _norms) = ops::recompose(
            &self.weight,
            &self.lora_a,
            &self.lora_b,
            &self.magnitude,
            self.scale,
        )?;
        Ok(merged)
    }
}

impl Tensor {
    /// A trainable copy of this tensor's values (f32).
    pub(crate) fn into_param_copy(self) -> Result<Tensor> {
        if self.dtype() != DType::F32 {
            return ops::to_f32(&self)?.into_param();
        }
        ops::copy(&self)?.into_param()
    }
}
