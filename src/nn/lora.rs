//! LoRA over a frozen linear layer, in PEFT's convention:
//!   y = x·Wᵀ + b + s·(drop(x)·Aᵀ)·Bᵀ,   s = alpha / r (rsLoRA: alpha / √r)

use super::init::{kaiming_uniform, Rng};
use super::linear::Linear;
use crate::autograd::no_grad;
use crate::error::{shape_err, Result};
use crate::io::{HostTensor, ModuleAdapter};
use crate::ops::{self, Transpose};
use crate::tensor::Tensor;

/// PEFT's scaling rule, defined beside PEFT's config in `io`.
pub use crate::io::lora_scaling;

/// Hyper-parameters of a new adapter; `Default` is PEFT's (r 8, alpha 8, no dropout).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdapterOptions {
    pub rank: usize,
    pub alpha: f32,
    pub use_rslora: bool,
    /// Probability of dropping an input element on the adapter path (training only).
    pub dropout: f32,
}

impl Default for AdapterOptions {
    fn default() -> Self {
        AdapterOptions {
            rank: 8,
            alpha: 8.0,
            use_rslora: false,
            dropout: 0.0,
        }
    }
}

impl AdapterOptions {
    pub fn scaling(&self) -> f32 {
        lora_scaling(self.alpha, self.rank, self.use_rslora)
    }
}

/// The low-rank pair shared by LoRA and DoRA: A [r, in] kaiming-uniform, B [out, r] zero.
pub(crate) fn init_low_rank(
    base: &Linear,
    options: &AdapterOptions,
    seed: u64,
) -> Result<(Tensor, Tensor)> {
    if options.rank == 0 {
        shape_err!("adapter rank must be at least 1");
    }
    if !(0.0..1.0).contains(&options.dropout) {
        shape_err!("adapter dropout must be in [0, 1), got {}", options.dropout);
    }
    let (r, in_f, out_f) = (options.rank, base.in_features(), base.out_features());
    let gpu = base.weight.gpu();
    let mut rng = Rng::new(seed);
    let a = Tensor::param(gpu, &kaiming_uniform(&mut rng, r, in_f), &[r, in_f])?;
    let b = Tensor::param(gpu, &vec![0.0; out_f * r], &[out_f, r])?;
    Ok((a, b))
}

/// Uploads a file's A and B as trainable tensors, checking them against the base layer.
pub(crate) fn upload_low_rank(base: &Linear, adapter: &ModuleAdapter) -> Result<(Tensor, Tensor)> {
    let (in_f, out_f) = (base.in_features(), base.out_features());
    let r = adapter.lora_a.shape.first().copied().unwrap_or(0);
    if adapter.lora_a.shape != [r, in_f] || adapter.lora_b.shape != [out_f, r] {
        shape_err!(
            "adapter lora_A {:?} / lora_B {:?} do not fit a base layer of [{out_f}, {in_f}]",
            adapter.lora_a.shape,
            adapter.lora_b.shape
        );
    }
    let gpu = base.weight.gpu();
    Ok((
        adapter.lora_a.to_gpu(gpu)?.into_param()?,
        adapter.lora_b.to_gpu(gpu)?.into_param()?,
    ))
}

/// s·(x·Aᵀ)·Bᵀ, recorded.
pub(crate) fn low_rank_term(x: &Tensor, a: &Tensor, b: &Tensor, scale: f32) -> Result<Tensor> {
    let xa = ops::matmul_ex(x, a, Transpose::NT)?;
    ops::scale(&ops::matmul_ex(&xa, b, Transpose::NT)?, scale)
}

#[derive(Clone, Debug)]
pub struct LoraLinear {
    pub base: Linear,
    /// Trainable [r, in].
    pub lora_a: Tensor,
    /// Trainable [out, r].
    pub lora_b: Tensor,
    pub scale: f32,
    pub dropout: f32,
}

impl LoraLinear {
    /// A fresh adapter (B = 0: the layer starts equal to the base layer).
    pub fn new(base: Linear, options: &AdapterOptions, seed: u64) -> Result<LoraLinear> {
        let (lora_a, lora_b) = init_low_rank(&base, options, seed)?;
        Ok(LoraLinear {
            base,
            lora_a,
            lora_b,
            scale: options.scaling(),
            dropout: options.dropout,
        })
    }

    /// An adapter read from a file (see [`crate::io::AdapterWeights`]).
    pub fn from_adapter(
        base: Linear,
        adapter: &ModuleAdapter,
        scale: f32,
        dropout: f32,
    ) -> Result<LoraLinear> {
        let (lora_a, lora_b) = upload_low_rank(&base, adapter)?;
        Ok(LoraLinear {
            base,
            lora_a,
            lora_b,
            scale,
            dropout,
        })
    }

    /// Evaluation forward (no dropout).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::lora_linear_fused(x, &self.fused(), None)
    }

    /// Training forward: dropout (with this seed) on the adapter's input only.
    pub fn forward_train(&self, x: &Tensor, dropout_seed: u32) -> Result<Tensor> {
        let dropout = (self.dropout > 0.0).then_some((self.dropout, dropout_seed));
        ops::lora_linear_fused(x, &self.fused(), dropout)
    }

    fn fused(&self) -> ops::FusedLora<'_> {
        ops::FusedLora {
            weight: &self.base.weight,
            bias: self.base.bias.as_ref(),
            lora_a: &self.lora_a,
            lora_b: &self.lora_b,
            scale: self.scale,
        }
    }

    pub fn parameters(&self) -> Vec<Tensor> {
        vec![self.lora_a.clone(), self.lora_b.clone()]
    }

    /// W + s·B·A in the base weight's dtype (f32 over a quantized base).
    pub fn merged_weight(&self) -> Result<Tensor> {
        ops::cast(&self.merged_weight_f32()?, self.base.weight.dtype().dense())
    }

    /// W + s·B·A in f32, before any cast back to the base dtype (for analyses
    /// where a 16-bit rounding would look like a change of the weight).
    pub fn merged_weight_f32(&self) -> Result<Tensor> {
        let _g = no_grad();
        let v = ops::to_f32(&self.base.weight)?;
        crate::kernels::matmul::matmul_raw(
            &self.lora_b,
            &self.lora_a,
            Transpose::NN,
            self.scale,
            1.0,
            Some(&v),
        )?;
        Ok(v)
    }

    /// The adapter tensors for saving in PEFT's format.
    pub fn to_adapter(&self) -> Result<ModuleAdapter> {
        Ok(ModuleAdapter {
            lora_a: HostTensor::from_gpu(&self.lora_a)?,
            lora_b: HostTensor::from_gpu(&self.lora_b)?,
            magnitude: None,
        })
    }
}
