//! `convert`: an adapter between PEFT's files and MLX-LM's, tensors copied
//! exactly (transposed where the layouts differ).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::io::hf::{MappedWeights, ModelConfig};
use crate::io::mlx::MlxAdapter;
use crate::io::AdapterWeights;

use super::new_dir::write_new_dir;

/// An adapter file layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterFormat {
    /// Hugging Face PEFT: `adapter_config.json` + `adapter_model.safetensors`.
    Peft,
    /// MLX-LM: `adapter_config.json` + `adapters.safetensors`.
    Mlx,
}

impl std::str::FromStr for AdapterFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "peft" => Ok(AdapterFormat::Peft),
            "mlx" => Ok(AdapterFormat::Mlx),
            other => Err(format!("unknown adapter format {other:?} (peft or mlx)")),
        }
    }
}

/// Converts the adapter in `adapter_dir` from `from` to `to`, writing the new
/// (or empty) `out_dir`. `model_dir` (the Hugging Face model the adapter is
/// for) checks every tensor's shape against the model's weights and gives its
/// layer count, which PEFT → MLX needs when the adapter covers only some layers.
/// Returns a one-line summary.
pub fn convert_adapter(
    from: AdapterFormat,
    to: AdapterFormat,
    adapter_dir: &Path,
    out_dir: &Path,
    model_dir: Option<&Path>,
) -> Result<String> {
    if from == to {
        return Err(Error::InvalidArgument(format!(
            "--from and --to are both {from:?}; nothing to convert"
        )));
    }
    let mut inputs = vec![("adapter", adapter_dir)];
    inputs.extend(model_dir.map(|m| ("model", m)));
    let model_layers = model_dir
        .map(ModelConfig::load)
        .transpose()?
        .map(|c| c.num_hidden_layers);
    let (peft, mlx) = match from {
        AdapterFormat::Peft => {
            let peft = AdapterWeights::load(adapter_dir)?;
            let mlx = MlxAdapter::from_peft(&peft, model_layers)?;
            (peft, mlx)
        }
        AdapterFormat::Mlx => {
            let mlx = MlxAdapter::load(adapter_dir)?;
            (mlx.to_peft(model_layers)?, mlx)
        }
    };
    if let Some(dir) = model_dir {
        peft.check_shapes(&model_linear_shapes(dir)?)?;
    }
    write_new_dir(out_dir, &inputs, |temp| match to {
        AdapterFormat::Peft => peft.save(temp),
        AdapterFormat::Mlx => mlx.save(temp),
    })?;
    let c = &mlx.config;
    Ok(format!(
        "{} adapter, r {}, scale {} (alpha {}), {} modules in the last {} layers",
        c.fine_tune_type.to_uppercase(),
        c.lora_parameters.rank,
        c.lora_parameters.scale,
        peft.config.lora_alpha,
        mlx.modules.len(),
        c.num_layers
    ))
}

/// `[out, in]` of every 2-D `<module>.weight` in the model's files.
fn model_linear_shapes(model_dir: &Path) -> Result<BTreeMap<String, (usize, usize)>> {
    let weights = MappedWeights::open(model_dir)?;
    Ok(weights
        .shapes()
        .into_iter()
        .filter_map(
            |(name, shape)| match (name.strip_suffix(".weight"), shape) {
                (Some(module), &[out, inp]) => Some((module.to_string(), (out, inp))),
                _ => None,
            },
        )
        .collect())
}
