//! Reading and writing `.safetensors` files with errors that name the file
//! and tensor, and atomic writes (temp file + rename) so a crash never leaves
//! a half-written file where a good one was.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::files::{write_atomically, write_atomically_with};
use crate::gpu::Gpu;
use crate::io::gguf::blocks::dequantize;
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

    /// The index of the first NaN or infinity, if any (integers have none).
    pub fn first_non_finite(&self) -> Option<usize> {
        first_non_finite(self.dtype, &self.bytes)
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
            DType::Quant(q) => {
                let mut out = Vec::with_capacity(self.numel());
                dequantize(q.into(), &self.bytes, &mut out);
                out
            }
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
            DType::Quant(_) => Tensor::from_le_bytes(gpu, &self.bytes, &self.shape, self.dtype),
        }
    }

    /// Downloads a GPU tensor in its own dtype (quantized blocks decoded to
    /// f32: what is saved is always a dense tensor).
    pub fn from_gpu(t: &Tensor) -> Result<HostTensor> {
        let bytes = match t.dtype() {
            DType::Quant(_) => {
                return Ok(HostTensor::from_f32(&t.to_vec_f32()?, t.shape()));
            }
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

/// The index of the first NaN or infinity among little-endian values of
/// `dtype` (integers have none). Reads the bits: 16-bit values need no conversion.
pub fn first_non_finite(dtype: DType, bytes: &[u8]) -> Option<usize> {
    let exponent_all_ones = |bits: u32, mask: u32| bits & mask == mask;
    match dtype {
        DType::F32 => bytes.chunks_exact(4).position(|b| {
            exponent_all_ones(u32::from_le_bytes([b[0], b[1], b[2], b[3]]), 0x7f80_0000)
        }),
        DType::BF16 | DType::F16 => {
            let mask = if dtype == DType::BF16 { 0x7f80 } else { 0x7c00 };
            bytes
                .chunks_exact(2)
                .position(|b| exponent_all_ones(u16::from_le_bytes([b[0], b[1]]) as u32, mask))
        }
        DType::I32 => None,
        DType::Quant(q) => {
            let (values, block_bytes) = q.block();
            let mut decoded = Vec::with_capacity(values);
            bytes
                .chunks_exact(block_bytes)
                .enumerate()
                .find_map(|(b, block)| {
                    decoded.clear();
                    dequantize(q.into(), block, &mut decoded);
                    let at = decoded.iter().position(|v| !v.is_finite())?;
                    Some(b * values + at)
                })
        }
    }
}

/// One tensor of a mapped file: its dtype, shape and bytes, borrowed from
/// the page cache (safetensors, unquantized GGUF) or decoded for this call
/// (a quantized GGUF tensor).
#[derive(Clone, Debug)]
pub struct TensorRef<'a> {
    pub dtype: DType,
    pub shape: &'a [usize],
    pub bytes: std::borrow::Cow<'a, [u8]>,
}

impl<'a> TensorRef<'a> {
    /// Uploads in the stored dtype, straight from the mapped bytes.
    pub fn to_gpu(&self, gpu: &Gpu) -> Result<Tensor> {
        Tensor::from_le_bytes(gpu, &self.bytes, self.shape, self.dtype)
    }

    pub fn first_non_finite(&self) -> Option<usize> {
        first_non_finite(self.dtype, &self.bytes)
    }

    /// The same values with quantized blocks decoded to f32, for files that
    /// hold no blocks (safetensors).
    pub fn into_dense(self) -> TensorRef<'a> {
        let DType::Quant(q) = self.dtype else {
            return self;
        };
        let mut values = Vec::with_capacity(self.shape.iter().product());
        dequantize(q.into(), &self.bytes, &mut values);
        TensorRef {
            dtype: DType::F32,
            shape: self.shape,
            bytes: std::borrow::Cow::Owned(bytemuck::cast_slice(&values).to_vec()),
        }
    }
}

/// A safetensors file mapped into memory. Its tensors are read from the page
/// cache as they are used, so loading a model holds about one tensor of host
/// memory at a time instead of the whole file, copied once more per tensor.
pub struct MappedSafetensors {
    map: memmap2::Mmap,
    tensors: BTreeMap<String, (DType, Vec<usize>, std::ops::Range<usize>)>,
}

impl MappedSafetensors {
    /// Maps and validates `path` (header, offsets, dtypes), reading no tensor data.
    pub fn open(path: &Path) -> Result<MappedSafetensors> {
        let io_err = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io_err)?;
        // Safety: the map is read-only and lives as long as this value. A file
        // changed by another program while mapped gives wrong values (the same
        // as reading it mid-write), which the shape and finiteness checks
        // downstream cannot always catch; loaders map model files they do not write.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
        let st = SafeTensors::deserialize(&map)
            .map_err(|e| format_err(path, format!("not a valid safetensors file ({e})")))?;
        let base = map.as_ptr() as usize;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let dtype = stored_dtype(path, &name, view.dtype())?;
            let start = view.data().as_ptr() as usize - base;
            let range = start..start + view.data().len();
            tensors.insert(name, (dtype, view.shape().to_vec(), range));
        }
        Ok(MappedSafetensors { map, tensors })
    }

    pub fn get(&self, name: &str) -> Option<TensorRef<'_>> {
        let (dtype, shape, range) = self.tensors.get(name)?;
        Some(TensorRef {
            dtype: *dtype,
            shape,
            bytes: std::borrow::Cow::Borrowed(&self.map[range.clone()]),
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }
}

/// The file dtype for one of the library's; quantized blocks have none.
fn file_dtype(path: &Path, name: &str, dtype: DType) -> Result<Dtype> {
    Ok(match dtype {
        DType::F32 => Dtype::F32,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        DType::I32 => Dtype::I32,
        DType::Quant(q) => {
            return Err(format_err(
                path,
                format!(
                    "tensor {name} is held as {} blocks, which safetensors cannot store",
                    q.name()
                ),
            ))
        }
    })
}

/// The library's dtype for a stored one, or an error naming the tensor.
fn stored_dtype(path: &Path, name: &str, dtype: Dtype) -> Result<DType> {
    match dtype {
        Dtype::F32 => Ok(DType::F32),
        Dtype::BF16 => Ok(DType::BF16),
        Dtype::F16 => Ok(DType::F16),
        Dtype::I32 => Ok(DType::I32),
        other => Err(format_err(
            path,
            format!("tensor {name} has dtype {other:?}; expected F32, BF16 or F16"),
        )),
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
        let dtype = stored_dtype(path, &name, view.dtype())?;
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
            safetensors::tensor::TensorView::new(
                file_dtype(path, name, t.dtype)?,
                t.shape.clone(),
                &t.bytes,
            )
            .map(|v| (name.clone(), v))
            .map_err(|e| format_err(path, format!("tensor {name}: {e}")))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| format_err(path, format!("cannot serialize: {e}")))?;
    write_atomically(path, &bytes)
}

/// One tensor of a streamed safetensors file: name, dtype and shape; its
/// bytes are asked for when its turn comes.
pub struct TensorEntry {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

/// Writes a safetensors file tensor by tensor, atomically: `bytes_of` is
/// called once per entry, in order, so only one tensor need be in host memory
/// at a time (`safetensors::serialize` would build the whole file first).
pub fn write_safetensors_streamed<'a>(
    path: &Path,
    entries: &[TensorEntry],
    metadata: &BTreeMap<String, String>,
    mut bytes_of: impl FnMut(&TensorEntry) -> Result<std::borrow::Cow<'a, [u8]>>,
) -> Result<()> {
    let bytes_len = |e: &TensorEntry| e.dtype.file_bytes(e.shape.iter().product());
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::json!(metadata));
    }
    let mut offset = 0usize;
    for e in entries {
        let len = bytes_len(e);
        let dtype = file_dtype(path, &e.name, e.dtype)?;
        header.insert(
            e.name.clone(),
            serde_json::json!({"dtype": dtype.to_string(), "shape": e.shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut json = serde_json::to_vec(&header).expect("plain data serializes");
    // The data starts 8-byte aligned, as the reference writer pads it.
    json.resize(json.len().next_multiple_of(8), b' ');
    write_atomically_with(path, |out| {
        out.write_all(&(json.len() as u64).to_le_bytes())
            .and_then(|()| out.write_all(&json))
            .map_err(|source| io_error(path, source))?;
        for e in entries {
            let bytes = bytes_of(e)?;
            if bytes.len() != bytes_len(e) {
                return Err(format_err(
                    path,
                    format!(
                        "tensor {}: {} bytes for shape {:?}",
                        e.name,
                        bytes.len(),
                        e.shape
                    ),
                ));
            }
            out.write_all(&bytes)
                .map_err(|source| io_error(path, source))?;
        }
        Ok(())
    })
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}
