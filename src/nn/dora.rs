//! DoRA over a frozen linear layer, in PEFT's convention:
//!   y = (m / ‖W + s·B·A‖_row) ⊙ (x·Wᵀ + s·(x·Aᵀ)·Bᵀ) + b
//!
//! Two ways to the row norm, both checked against each other:
//! - `Factored` (default): ‖V_i‖² = ‖W_i‖² + 2s·B_i·(A·W_iᵀ) + s²·B_i·(A·Aᵀ)·B_iᵀ,
//!   with ‖W_i‖² cached once; per step one [r,in]×[in,out] product and an r×r
//!   Gram matrix. The dense update s·B·A never exists, and the forward is one
//!   fused op (base product, low-rank term, column scale and bias together).
//! - `Direct`: materialise V = W + s·B·A and W' = (m/‖V‖) ⊙ V, then one matmul.
//!
//! The norm is a constant in backward by default (paper §4.3, and PEFT);
//! `norm_grad = true` differentiates through it.

use super::linear::Linear;
use super::lora::{init_low_rank, low_rank_term, upload_low_rank, AdapterOptions};
use crate::autograd::no_grad;
use crate::error::{shape_err, Result};
use crate::io::{HostTensor, ModuleAdapter};
use crate::ops::{self, Transpose};
use crate::tensor::Tensor;

/// How the row norm ‖W + s·B·A‖ is computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DoraPath {
    #[default]
    Factored,
    Direct,
}

#[derive(Clone, Debug)]
pub struct DoraLinear {
    pub base: Linear,
    /// Trainable [r, in].
    pub lora_a: Tensor,
    /// Trainable [out, r].
    pub lora_b: Tensor,
    /// Trainable [out].
    pub magnitude: Tensor,
    pub scale: f32,
    pub dropout: f32,
    pub path: DoraPath,
    /// Back-propagate through the row norm (off by default, as in PEFT).
    pub norm_grad: bool,
    /// ‖W_i‖², computed once: W is frozen.
    weight_sq_norm: Tensor,
}

impl DoraLinear {
    /// A fresh adapter: A kaiming-uniform, B = 0, m = ‖W‖_row, so the layer
    /// starts equal to the base layer.
    pub fn new(base: Linear, options: &AdapterOptions, seed: u64) -> Result<DoraLinear> {
        let (lora_a, lora_b) = init_low_rank(&base, options, seed)?;
        let (magnitude, weight_sq_norm) = {
            let _g = no_grad();
            let n = ops::row_norm(&base.weight)?;
            (ops::copy(&n)?.into_param()?, ops::square(&n)?)
        };
        Ok(DoraLinear {
            base,
            lora_a,
            lora_b,
            magnitude,
            scale: options.scaling(),
            dropout: options.dropout,
            path: DoraPath::Factored,
            norm_grad: false,
            weight_sq_norm,
        })
    }

    /// An adapter read from a file (see [`crate::io::AdapterWeights`]).
    pub fn from_adapter(
        base: Linear,
        adapter: &ModuleAdapter,
        scale: f32,
        dropout: f32,
    ) -> Result<DoraLinear> {
        let (lora_a, lora_b) = upload_low_rank(&base, adapter)?;
        let Some(m) = &adapter.magnitude else {
            shape_err!("a DoRA layer needs a lora_magnitude_vector; this adapter has none");
        };
        if m.shape != [base.out_features()] {
            shape_err!(
                "lora_magnitude_vector is {:?}, expected [{}]",
                m.shape,
                base.out_features()
            );
        }
        let magnitude = m.to_gpu(base.weight.gpu())?.into_param()?;
        let weight_sq_norm = {
            let _g = no_grad();
            ops::square(&ops::row_norm(&base.weight)?)?
        };
        Ok(DoraLinear {
            base,
            lora_a,
            lora_b,
            magnitude,
            scale,
            dropout,
            path: DoraPath::Factored,
            norm_grad: false,
            weight_sq_norm,
        })
    }

    /// ‖W + s·B·A‖ for each output row, by `self.path`. Recorded only when
    /// `norm_grad` is on; otherwise a constant.
    pub fn weight_norm(&self) -> Result<Tensor> {
        let _g = (!self.norm_grad).then(no_grad);
        match self.path {
            DoraPath::Factored => self.factored_norm(),
            DoraPath::Direct => ops::row_norm(&self.direction()?),
        }
    }

    /// n² = ‖W_i‖² + 2s·Σ_k B_ik·(A·W_iᵀ)_k + s²·B_i·(A·Aᵀ)·B_iᵀ, without the dense update.
    fn factored_norm(&self) -> Result<Tensor> {
        if !self.norm_grad {
            // The usual case (PEFT detaches the norm): two small matmuls and one fused pass.
            let aw = ops::matmul_ex(&self.lora_a, &self.base.weight, Transpose::NT)?; // [r, out]
            let gram = ops::matmul_ex(&self.lora_a, &self.lora_a, Transpose::NT)?; // [r, r]
            return ops::dora::factored_norm(
                &aw,
                &self.lora_b,
                &gram,
                &self.weight_sq_norm,
                self.scale,
            );
        }
        let s = self.scale;
        let (a, b) = (&self.lora_a, &self.lora_b);
        let aw = ops::matmul_ex(a, &self.base.weight, Transpose::NT)?; // [r, out]
        let cross = ops::sum_rows(&ops::mul(b, &ops::transpose(&aw)?)?)?; // [out]
        let gram = ops::matmul_ex(a, a, Transpose::NT)?; // [r, r]
        let quad = ops::sum_rows(&ops::mul(b, &ops::matmul(b, &gram)?)?)?; // [out]
        let sq = ops::add(
            &ops::add(&self.weight_sq_norm, &ops::scale(&cross, 2.0 * s)?)?,
            &ops::scale(&quad, s * s)?,
        )?;
        ops::sqrt(&sq)
    }

    /// V = W + s·B·A, materialised in f32 (the direct path and merging).
    fn direction(&self) -> Result<Tensor> {
        let w = {
            let _g = no_grad();
            ops::to_f32(&self.base.weight)?
        };
        ops::add(
            &w,
            &ops::scale(&ops::matmul(&self.lora_b, &self.lora_a)?, self.scale)?,
        )
    }

    /// Evaluation forward (no dropout): y for x of shape [..., in].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match (self.path, self.norm_grad) {
            (DoraPath::Factored, false) => {
                let norm = self.weight_norm()?;
                ops::dora_linear_fused(x, &self.fused(&norm))
            }
            (DoraPath::Factored, true) => {
                let z = ops::add(
                    &ops::matmul_ex(x, &self.base.weight, Transpose::NT)?,
                    &low_rank_term(x, &self.lora_a, &self.lora_b, self.scale)?,
                )?;
                let y = ops::mul(&z, &ops::div(&self.magnitude, &self.weight_norm()?)?)?;
                self.add_bias(y)
            }
            (DoraPath::Direct, _) => {
                let v = self.direction()?;
                let n = if self.norm_grad {
                    ops::row_norm(&v)?
                } else {
                    let _g = no_grad();
                    ops::row_norm(&v.detach())?
                };
                let c = ops::reshape(&ops::div(&self.magnitude, &n)?, &[n.numel(), 1])?;
                let merged = ops::mul(&v, &c)?;
                self.add_bias(ops::matmul_ex(x, &merged, Transpose::NT)?)
            }
        }
    }

    /// Training forward with PEFT's dropout semantics: the base path sees the
    /// undropped input, the adapter path and the (c − 1) correction the dropped one:
    ///   y = x·Wᵀ + b + (c − 1) ⊙ (drop(x)·Wᵀ) + c ⊙ s·(drop(x)·Aᵀ)·Bᵀ
    /// The factored path with a detached norm runs it as one fused op; the
    /// others compose recorded ops.
    pub fn forward_train(&self, x: &Tensor, dropout_seed: u32) -> Result<Tensor> {
        if self.dropout == 0.0 {
            return self.forward(x);
        }
        if let (DoraPath::Factored, false) = (self.path, self.norm_grad) {
            // One recorded op that keeps x, its output and x_d·Aᵀ for backward.
            let norm = self.weight_norm()?;
            return ops::dora_linear_fused_dropout(
                x,
                &self.fused(&norm),
                self.dropout,
                dropout_seed,
            );
        }
        let xd = ops::dropout(x, self.dropout, dropout_seed)?;
        let c = ops::div(&self.magnitude, &self.weight_norm()?)?;
        let base = ops::matmul_ex(x, &self.base.weight, Transpose::NT)?;
        let base_dropped = ops::matmul_ex(&xd, &self.base.weight, Transpose::NT)?;
        let adapted = ops::add(
            &base_dropped,
            &low_rank_term(&xd, &self.lora_a, &self.lora_b, self.scale)?,
        )?;
        // base + c ⊙ (drop·Wᵀ + s·lora) − drop·Wᵀ  ==  base + (c − 1) ⊙ drop·Wᵀ + c ⊙ s·lora
        let y = ops::sub(&ops::add(&base, &ops::mul(&adapted, &c)?)?, &base_dropped)?;
        self.add_bias(y)
    }

    /// The layer's tensors for the fused ops, with the (detached) row norms.
    fn fused<'a>(&'a self, norm: &'a Tensor) -> ops::FusedDora<'a> {
        ops::FusedDora {
            weight: &self.base.weight,
            bias: self.base.bias.as_ref(),
            lora_a: &self.lora_a,
            lora_b: &self.lora_b,
            magnitude: &self.magnitude,
            norm,
            scale: self.scale,
        }
    }

    fn add_bias(&self, y: Tensor) -> Result<Tensor> {
        match &self.base.bias {
            Some(b) => ops::add(&y, b),
            None => Ok(y),
        }
    }

    pub fn parameters(&self) -> Vec<Tensor> {
        vec![
            self.lora_a.clone(),
            self.lora_b.clone(),
            self.magnitude.clone(),
        ]
    }

    /// Folds the adapter into the base weight with the recomposition kernel:
    /// W' = (m / ‖W + s·B·A‖) ⊙ (W + s·B·A), in the base weight's dtype (f32
    /// over a quantized base: see [`crate::tensor::DType::dense`]). Also
    /// returns the row norms, which [`DoraLinear::unmerge`] needs.
    pub fn merge(&self) -> Result<(Tensor, Tensor)> {
        let (merged, norms) = self.merge_f32()?;
        Ok((ops::cast(&merged, self.base.weight.dtype().dense())?, norms))
    }

    /// [`DoraLinear::merge`] before the cast back to the base dtype: the f32
    /// merged weight and the row norms.
    pub fn merge_f32(&self) -> Result<(Tensor, Tensor)> {
        let _g = no_grad();
        ops::recompose(
            &self.base.weight,
            &self.lora_a,
            &self.lora_b,
            &self.magnitude,
            self.scale,
        )
    }

    /// Recovers the base weight from a merged one: W = (n / m) ⊙ W' − s·B·A,
    /// in the merged weight's dtype.
    pub fn unmerge(&self, merged: &Tensor, norms: &Tensor) -> Result<Tensor> {
        let _g = no_grad();
        if merged.shape() != self.base.weight.shape() || norms.shape() != self.magnitude.shape() {
            shape_err!(
                "unmerge: merged weight {:?} / norms {:?} do not fit this layer ({:?} / {:?})",
                merged.shape(),
                norms.shape(),
                self.base.weight.shape(),
                self.magnitude.shape()
            );
        }
        let rows = norms.numel();
        let inverse = ops::reshape(&ops::div(norms, &self.magnitude)?, &[rows, 1])?;
        let w = ops::mul(&ops::to_f32(merged)?, &inverse)?;
        crate::kernels::matmul::matmul_raw(
            &self.lora_b,
            &self.lora_a,
            Transpose::NN,
            -self.scale,
            1.0,
            Some(&w),
        )?;
        ops::cast(&w, merged.dtype().dense())
    }

    /// The adapter tensors for saving in PEFT's format.
    pub fn to_adapter(&self) -> Result<ModuleAdapter> {
        Ok(ModuleAdapter {
            lora_a: HostTensor::from_gpu(&self.lora_a)?,
            lora_b: HostTensor::from_gpu(&self.lora_b)?,
            magnitude: Some(HostTensor::from_gpu(&self.magnitude)?),
        })
    }
}
