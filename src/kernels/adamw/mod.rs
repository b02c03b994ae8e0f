//! One AdamW update of a parameter and its moments, in place (adamw.wgsl).

use super::params::{kernel_params, Params};
use super::{groups_for_elements, launch, Access, Family, Kernel, ParamsLayout};
use crate::error::Result;
use crate::tensor::Tensor;
use Access::{Read, ReadWrite};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdamW;

kernel_params! {
    /// torch's update; the bias corrections are computed on the host.
    pub(crate) struct AdamWParams {
        n: u32,
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        /// lr / (1 − β₁ᵗ)
        step_size: f32,
        /// √(1 − β₂ᵗ)
        bc2_sqrt: f32,
        grad_scale: f32,
    }
}

impl Family for AdamW {
    fn entry(&self) -> &'static str {
        "adamw_step"
    }
    fn bindings(&self) -> &'static [(u32, Access)] {
        &[(1, ReadWrite), (2, Read), (3, ReadWrite), (4, ReadWrite)]
    }
    fn params(&self) -> ParamsLayout {
        AdamWParams::layout()
    }
    fn body(&self) -> &'static str {
        include_str!("adamw.wgsl")
    }
}

pub(super) fn variants() -> Vec<Kernel> {
    vec![AdamW.into()]
}

/// Updates `param` and its moments `m`, `v` in place from the gradient `g`.
pub(crate) fn adamw_step(
    param: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    params: &AdamWParams,
) -> Result<()> {
    launch(
        AdamW,
        params,
        &[param, g, m, v],
        groups_for_elements(param.numel()),
    )
}
