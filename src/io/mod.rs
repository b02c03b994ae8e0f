//! Files: safetensors tensors and PEFT adapter directories.

pub mod hf;
mod peft;
mod safetensors;

pub use self::peft::{AdapterConfig, AdapterWeights, ModuleAdapter};
pub use self::safetensors::{read_safetensors, write_atomically, write_safetensors, HostTensor};
