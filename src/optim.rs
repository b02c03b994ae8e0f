//! AdamW on the GPU: decoupled weight decay and bias correction, the same
//! arithmetic as `torch.optim.AdamW` (checked against its values in tests).

use crate::error::{arg_err, Result};
use crate::kernels::adamw::{adamw_step, AdamWParams};
use crate::tensor::{DType, Tensor};

/// AdamW hyper-parameters; `Default` is torch's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

/// AdamW over a fixed list of trainable tensors, updated in place.
pub struct AdamW {
    pub config: AdamWConfig,
    params: Vec<Tensor>,
    /// First and second moment estimates, one pair per parameter.
    moments: Vec<(Tensor, Tensor)>,
    step: u64,
}

impl AdamW {
    pub fn new(params: Vec<Tensor>, config: AdamWConfig) -> Result<AdamW> {
        let mut moments = Vec::with_capacity(params.len());
        for (i, p) in params.iter().enumerate() {
            if !p.is_param() {
                arg_err!(
                    "AdamW: parameter {i} ({:?}) is not a trainable tensor",
                    p.shape()
                );
            }
            let m = Tensor::zeros(p.gpu(), p.shape(), DType::F32)?;
            let v = Tensor::zeros(p.gpu(), p.shape(), DType::F32)?;
            moments.push((m, v));
        }
        Ok(AdamW {
            config,
            params,
            moments,
            step: 0,
        })
    }

    /// One update from the accumulated gradients; parameters without a gradient are left alone.
    pub fn step(&mut self) -> Result<()> {
        self.step_scaled(1.0)
    }

    /// One update with every gradient multiplied by `grad_scale` first
    /// (gradient clipping, averaging over micro-batches).
    pub fn step_scaled(&mut self, grad_scale: f32) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - (c.beta1 as f64).powi(t);
        let bc2 = 1.0 - (c.beta2 as f64).powi(t);
        for (p, (m, v)) in self.params.iter().zip(&self.moments) {
            let Some(g) = p.grad() else { continue };
            let params = AdamWParams {
                n: p.numel() as u32,
                lr: c.lr,
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                weight_decay: c.weight_decay,
                step_size: (c.lr as f64 / bc1) as f32,
                bc2_sqrt: bc2.sqrt() as f32,
                grad_scale,
            };
            adamw_step(p, &g, m, v, &params)?;
        }
        Ok(())
    }

    /// Clears every parameter's accumulated gradient.
    pub fn zero_grad(&self) {
        for p in &self.params {
            p.zero_grad();
        }
    }

    /// Number of steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// Restores the step count and moments of a checkpoint (same parameter
    /// order and shapes as this optimizer's).
    pub fn load_state(&mut self, step: u64, moments: Vec<(Tensor, Tensor)>) -> Result<()> {
        if moments.len() != self.params.len() {
            arg_err!(
                "AdamW state holds {} moment pairs for {} parameters",
                moments.len(),
                self.params.len()
            );
        }
        for (i, (p, (m, v))) in self.params.iter().zip(&moments).enumerate() {
            if m.shape() != p.shape() || v.shape() != p.shape() {
                arg_err!(
                    "AdamW state: moments {:?}/{:?} do not fit parameter {i} {:?}",
                    m.shape(),
                    v.shape(),
                    p.shape()
                );
            }
        }
        self.moments = moments;
        self.step = step;
        Ok(())
    }

    /// The (first, second) moment estimates, one pair per parameter.
    pub fn moments(&self) -> &[(Tensor, Tensor)] {
        &self.moments
    }
}
