//! A frozen linear layer: y = x·Wᵀ + b with W in the Hugging Face [out, in] layout.

use crate::autograd::no_grad;
use crate::error::{shape_err, Result};
use crate::ops::{self, Transpose};
use crate::tensor::{DType, Tensor};

#[derive(Clone, Debug)]
pub struct Linear {
    /// [out, in]: f32, bf16 or f16. Never trained.
    pub weight: Tensor,
    /// [out], f32 (a 16-bit bias is widened on construction). Never scaled by adapters.
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Linear> {
        let &[out_f, _] = weight.shape() else {
            shape_err!(
                "Linear: weight must be 2-D [out, in], got {:?}",
                weight.shape()
            );
        };
        if !weight.dtype().is_float() {
            shape_err!(
                "Linear: weight must be f32, bf16 or f16, got {}",
                weight.dtype().name()
            );
        }
        if weight.requires_grad() {
            shape_err!("Linear: the base weight is frozen; pass a tensor that is not trainable");
        }
        let bias = match bias {
            Some(b) if b.shape() != [out_f] => {
                shape_err!("Linear: bias is {:?}, expected [{out_f}]", b.shape())
            }
            Some(b) if b.dtype() != DType::F32 => {
                let _g = no_grad();
                Some(ops::to_f32(&b)?)
            }
            other => other,
        };
        Ok(Linear { weight, bias })
    }

    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }

    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }

    /// x [..., in] -> [..., out]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = ops::matmul_ex(x, &self.weight, Transpose::NT)?;
        match &self.bias {
            Some(b) => ops::add(&y, b),
            None => Ok(y),
        }
    }
}
