//! Layers built from ops: a frozen linear layer and the LoRA and DoRA adapters over it.

mod dora;
mod init;
mod linear;
mod llama;
mod lora;

pub use dora::{DoraLinear, DoraPath};
pub use init::{kaiming_uniform, Rng};
pub use linear::Linear;
pub use llama::{
    check_weights_fit, decoder_targets_regex, module_path, projections, DecoderLayer, KvCache,
    Llama, Projection, FUSED_PROJECTIONS, PROJECTIONS,
};
pub use lora::{lora_scaling, AdapterOptions, LoraLinear};
