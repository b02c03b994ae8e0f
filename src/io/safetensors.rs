//! Reading and writing `.safetensors` files with errors that name the file
//! and tensor, and atomic writes (temp file + rename) so a crash never leaves
//! a half-written file where a good one was.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::tensor::{DType, Tensor};

/// A tensor on the host as stored in a file: its dtype, shape and raw
/// little-endian bytes (16-bit types stay 16-bit until asked for f32).
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl HostTensor {
    pub fn from_f32(data: &[f32], shape: &[usize]) -> HostTensor {
        HostTensor {
            dtype: DType::F32,
            shape: shape.to_vec(),
            bytes: bytemuck::cast_slice(data).to_vec(),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values widened to f32.
    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            DType::F32 => bytemuck::pod_collect_to_vec(&self.bytes),
            DType::BF16 => bytemuck::pod_collect_to_vec::<u8, bf16>(&self.bytes)
                .iter()
                .map(|x| x.to_f32())
                .collect(),
            DType::F16 => bytemuck::pod_collect_to_vec::<u8, f16>(&self.bytes)
                .iter()
                .map(|x| x.to_f32())
                .collect(),
            DType::I32 => bytemuck::pod_collect_to_vec::<u8, i32>(&self.bytes)
                .iter()
                .map(|&x| x as f32)
                .collect(),
        }
    }

    /// Uploads in the stored dtype.
    pub fn to_gpu(&self, gpu: &Gpu) -> Result<Tensor> {
        match self.dtype {
            DType::F32 => {
                Tensor::from_f32(gpu, &bytemuck::pod_collect_to_vec(&self.bytes), &self.shape)
            }
            DType::BF16 => {
                Tensor::from_bf16(gpu, &bytemuck::pod_collect_to_vec(&self.bytes), &self.shape)
            }
            DType::F16 => {
                Tensor::from_f16(gpu, &bytemuck::pod_collect_to_vec(&self.bytes), &self.shape)
            }
            DType::I32 => {
                Tensor::from_i32(gpu, &bytemuck::pod_collect_to_vec(&self.bytes), &self.shape)
            }
        }
    }

    /// Downloads a GPU tensor in its own dtype.
    pub fn from_gpu(t: &Tensor) -> Result<HostTensor> {
        let bytes = match t.dtype() {
            DType::F32 => bytemuck::cast_slice(&t.to_vec_f32()?).to_vec(),
            DType::I32 => bytemuck::cast_slice(&t.to_vec_i32()?).to_vec(),
            DType::BF16 => {
                let v: Vec<bf16> = t.to_vec_f32()?.iter().map(|&x| bf16::from_f32(x)).collect();
                bytemuck::cast_slice(&v).to_vec()
            }
            DType::F16 => {
                let v: Vec<f16> = t.to_vec_f32()?.iter().map(|&x| f16::from_f32(x)).collect();
                bytemuck::cast_slice(&v).to_vec()
            }
        };
        Ok(HostTensor {
            dtype: t.dtype(),
            shape: t.shape().to_vec(),
            bytes,
        })
    }
}

fn format_err(path: &Path, message: String) -> Error {
    Error::Format {
        path: path.display().to_string(),
        message,
    }
}

/// Reads every tensor of a safetensors file. Fails with the file's name on a
/// missing, truncated or malformed file, and with the tensor's name on a
/// dtype this library cannot hold (f32, bf16, f16 and i32 are accepted).
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| format_err(path, format!("not a valid safetensors file ({e})")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::BF16 => DType::BF16,
            Dtype::F16 => DType::F16,
            Dtype::I32 => DType::I32,
            other => {
                return Err(format_err(
                    path,
                    format!("tensor {name} has dtype {other:?}; expected F32, BF16 or F16"),
                ))
            }
        };
        out.insert(
            name,
            HostTensor {
                dtype,
                shape: view.shape().to_vec(),
                bytes: view.data().to_vec(),
            },
        );
    }
    Ok(out)
}

/// Writes tensors (sorted by name) and optional string metadata, atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, HostTensor>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, t)| {
            let dtype = match t.dtype {
                DType::F32 => Dtype::F32,
                DType::BF16 => Dtype::BF16,
                DType::F16 => Dtype::F16,
                DType::I32 => Dtype::I32,
            };
            safetensors::tensor::TensorView::new(dtype, t.shape.clone(), &t.bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| format_err(path, format!("tensor {name}: {e}")))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| format_err(path, format!("cannot serialize: {e}")))?;
    write_atomically(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same folder,
/// synced and then renamed over the target: readers see the old file or the
/// new one, never a partial one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let io_err = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| format_err(path, "not a file path".into()))?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}
