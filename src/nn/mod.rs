//! Layers built from ops.

mod dora;
mod init;

pub use dora::DoraLinear;
pub use init::{kaiming_uniform, Rng};
