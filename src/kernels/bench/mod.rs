//! The benchmark's FMA loop (bench.wgsl): the device's arithmetic ceiling.

use super::params::{kernel_params, Params};
use super::{groups_for_elements, launch, Access, Family, Kernel, ParamsLayout};
use crate::error::Result;
use crate::tensor::Tensor;
use Access::ReadWrite;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FmaPeak;

kernel_params! {
    pub(crate) struct BenchParams {
        iters: u32,
    }
}

impl Family for FmaPeak {
    fn entry(&self) -> &'static str {
        "fma_peak"
    }
    fn bindings(&self) -> &'static [(u32, Access)] {
        &[(1, ReadWrite)]
    }
    fn params(&self) -> ParamsLayout {
        BenchParams::layout()
    }
    fn body(&self) -> &'static str {
        include_str!("bench.wgsl")
    }
}

pub(super) fn variants() -> Vec<Kernel> {
    vec![FmaPeak.into()]
}

/// `iters` iterations of 32 FMA pairs by each invocation, one per element of `out`.
pub(crate) fn fma_peak(out: &Tensor, iters: u32) -> Result<()> {
    launch(
        FmaPeak,
        &BenchParams { iters },
        &[out],
        groups_for_elements(out.numel()),
    )
}
