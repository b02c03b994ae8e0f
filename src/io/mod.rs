//! Files: safetensors tensors, GGUF files, PEFT and MLX-LM adapter directories.

pub mod gguf;
pub mod hf;
pub mod mlx;
mod peft;
mod safetensors;

pub use self::peft::{
    lora_scaling, AdapterConfig, AdapterWeights, ModuleAdapter, TargetModules, CONFIG_FILE,
    WEIGHTS_FILE,
};
pub use self::safetensors::{
    read_safetensors, write_safetensors, write_safetensors_streamed, HostTensor, MappedSafetensors,
    TensorEntry, TensorRef,
};
pub(crate) use crate::files::write_atomically_with;
pub use crate::files::{unique_suffix, write_atomically};

/// Parses JSON text into `T`; an error names the field at fault
/// (`field rope_theta: invalid type: string "big", expected f64 at line 3 column 22`).
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    text: &str,
) -> std::result::Result<T, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // Broken JSON has no field to blame; a wrong value does.
        if path == "." || !inner.is_data() {
            inner.to_string()
        } else {
            format!("field {path}: {inner}")
        }
    })?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}
