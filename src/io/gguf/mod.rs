//! GGUF files, llama.cpp's single-file model format (versions 2 and 3,
//! little-endian): the header, the metadata, the tensor table, and each
//! tensor's bytes from a memory map, decoded to f32 by [`blocks`].
//!
//! Layout: magic `GGUF`, version u32, tensor count u64, metadata count u64;
//! metadata as (string key, u32 value type, value); tensor infos as (string
//! name, u32 dims, u64 dims innermost first, u32 ggml type, u64 offset); then
//! the data section at the next multiple of `general.alignment` (default 32),
//! every tensor offset relative to it and aligned to it. Strings are a u64
//! length and UTF-8 bytes. Every length and offset is checked against the
//! file before use, so a damaged file is an error naming what is wrong, never
//! a huge allocation or a read past the end.

pub mod blocks;
mod model;
mod write;

use std::collections::BTreeMap;
use std::path::Path;

pub use blocks::GgmlType;
pub use model::GgufModel;
pub use write::{write_gguf, OutTensor};

use crate::{Error, Result};

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// Row-major shape, outermost first (ggml's dims reversed): a linear
    /// layer's weight is `[out, in]`, as in safetensors.
    pub shape: Vec<usize>,
    /// The stored format, or the ggml type id of one not read here.
    pub kind: std::result::Result<GgmlType, u32>,
    /// Byte range in the file; None for a type not read here (its size is unknown).
    range: Option<std::ops::Range<usize>>,
}

impl TensorInfo {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The type's name, or `type id N` for one not read here.
    pub fn kind_name(&self) -> String {
        match self.kind {
            Ok(k) => k.name().to_string(),
            Err(id) => format!("type id {id}"),
        }
    }
}

/// A GGUF file, mapped into memory and its header checked; tensor data is
/// read only when asked for.
pub struct GgufFile {
    path: String,
    map: memmap2::Mmap,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    /// In file order.
    pub tensors: Vec<TensorInfo>,
    index: BTreeMap<String, usize>,
}

const MAGIC: &[u8; 4] = b"GGUF";
/// Deeper nesting than arrays of arrays is not written by any tool; the
/// bound keeps a damaged file from recursing without end.
const MAX_ARRAY_DEPTH: usize = 4;

impl GgufFile {
    /// Maps `path` and parses its header, metadata and tensor table.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let shown = path.display().to_string();
        let io_err = |source| Error::Io {
            path: shown.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io_err)?;
        // Safety: read-only map that lives as long as this value; the same
        // caveat as MappedSafetensors (a file changed while mapped reads wrong).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
        let err = |message: String| Error::Format {
            path: shown.clone(),
            message,
        };
        let (version, metadata, tensors) = parse(&map).map_err(err)?;
        let mut index = BTreeMap::new();
        for (i, t) in tensors.iter().enumerate() {
            if index.insert(t.name.clone(), i).is_some() {
                return Err(Error::Format {
                    path: shown,
                    message: format!("tensor {} appears twice in the tensor table", t.name),
                });
            }
        }
        Ok(GgufFile {
            path: shown,
            map,
            version,
            metadata,
            tensors,
            index,
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The stored bytes of tensor `name` (whole blocks of its type).
    pub fn tensor_bytes(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self.tensor(name).ok_or_else(|| Error::Format {
            path: self.path.clone(),
            message: format!("no tensor named {name}"),
        })?;
        let range = info.range.clone().ok_or_else(|| Error::Format {
            path: self.path.clone(),
            message: format!(
                "tensor {name} is stored as {}, which dora-wgpu does not read (it reads {})",
                info.kind_name(),
                supported_types()
            ),
        })?;
        Ok((info, &self.map[range]))
    }

    /// Tensor `name` decoded to f32, row-major in [`TensorInfo::shape`].
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (info, bytes) = self.tensor_bytes(name)?;
        let kind = info
            .kind
            .expect("a tensor with a byte range has a known type");
        let mut out = Vec::with_capacity(info.len());
        blocks::dequantize(kind, bytes, &mut out);
        Ok((info.shape.clone(), out))
    }
}

fn supported_types() -> String {
    GgmlType::ALL.map(GgmlType::name).join(", ")
}

type Parsed = (u32, BTreeMap<String, Value>, Vec<TensorInfo>);

fn parse(bytes: &[u8]) -> std::result::Result<Parsed, String> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4, "the magic number").ok() != Some(MAGIC.as_slice()) {
        return Err("not a GGUF file (it does not start with \"GGUF\")".into());
    }
    let version = r.u32("the version")?;
    match version {
        2 | 3 => {}
        1 => return Err("GGUF version 1 is not supported (versions 2 and 3 are); convert the file again with a current llama.cpp".into()),
        v if v.swap_bytes() <= 3 => return Err("big-endian GGUF files are not supported".into()),
        v => return Err(format!("GGUF version {v} is not supported (versions 2 and 3 are)")),
    }
    let n_tensors = r.u64("the tensor count")?;
    let n_kv = r.u64("the metadata count")?;
    // Each entry takes at least 8 bytes: counts beyond the file are damage.
    for (count, what) in [(n_tensors, "tensor"), (n_kv, "metadata")] {
        if count > (bytes.len() / 8) as u64 {
            return Err(format!(
                "the header claims {count} {what} entries, more than the file can hold"
            ));
        }
    }
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = r.string(&format!("the key of metadata entry {i}"))?;
        let ty = r.u32(&format!("the type of metadata {key}"))?;
        let value = r.value(ty, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("metadata key {key} appears twice"));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => 32,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a as usize,
            _ => {
                return Err(format!(
                    "general.alignment is {v:?}; it must be a power of two"
                ))
            }
        },
    };
    let mut raw = Vec::new();
    for i in 0..n_tensors {
        let name = r.string(&format!("the name of tensor {i}"))?;
        let n_dims = r.u32(&format!("the dimension count of tensor {name}"))?;
        if !(1..=4).contains(&n_dims) {
            return Err(format!(
                "tensor {name} has {n_dims} dimensions (1 to 4 allowed)"
            ));
        }
        let mut dims = Vec::new();
        for _ in 0..n_dims {
            let d = r.u64(&format!("the dimensions of tensor {name}"))?;
            dims.push(
                usize::try_from(d)
                    .map_err(|_| format!("tensor {name}: dimension {d} is too large"))?,
            );
        }
        let ty = r.u32(&format!("the type of tensor {name}"))?;
        let offset = r.u64(&format!("the offset of tensor {name}"))?;
        raw.push((name, dims, ty, offset));
    }
    let data_start = r.at.div_ceil(alignment) * alignment;
    let data_len = bytes.len().saturating_sub(data_start);
    let mut tensors = Vec::new();
    for (name, dims, ty, offset) in raw {
        let len = dims
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| format!("tensor {name}: shape {dims:?} overflows"))?;
        let kind = GgmlType::from_id(ty).ok_or(ty);
        let range = match kind {
            Err(_) => None,
            Ok(k) => {
                let (block_values, _) = k.block();
                if !dims[0].is_multiple_of(block_values) {
                    return Err(format!(
                        "tensor {name}: rows of {} values are not whole {} blocks of {block_values}",
                        dims[0],
                        k.name()
                    ));
                }
                let size = k.bytes_for(len).expect("rows are whole blocks");
                if !offset.is_multiple_of(alignment as u64) {
                    return Err(format!(
                        "tensor {name}: offset {offset} is not a multiple of the alignment {alignment}"
                    ));
                }
                let extent = usize::try_from(offset)
                    .ok()
                    .and_then(|s| Some((s, s.checked_add(size)?)))
                    .filter(|&(_, end)| end <= data_len);
                let (start, end) = extent.ok_or_else(|| {
                    format!(
                        "tensor {name}: {size} bytes at offset {offset} run past the end of the data ({data_len} bytes); the file is truncated or damaged"
                    )
                })?;
                Some(data_start + start..data_start + end)
            }
        };
        let shape = dims.iter().rev().copied().collect();
        tensors.push(TensorInfo {
            name,
            shape,
            kind,
            range,
        });
    }
    Ok((version, metadata, tensors))
}

/// Reads little-endian fields, each read checked against the end of the file.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| {
            format!(
                "the file ends inside {what} (at byte {}); it is truncated",
                self.at
            )
        })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        Ok(self.take(N, what)?.try_into().expect("took N bytes"))
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let len = self.u64(what)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.bytes.len() - self.at)
            .ok_or_else(|| {
                format!("{what}: a string of {len} bytes runs past the end of the file")
            })?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> std::result::Result<Value, String> {
        let what = format!("metadata {key}");
        Ok(match ty {
            0 => Value::U8(self.array::<1>(&what)?[0]),
            1 => Value::I8(self.array::<1>(&what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => Value::U32(self.u32(&what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => match self.array::<1>(&what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("{what}: {b} is not a boolean (0 or 1)")),
            },
            8 => Value::String(self.string(&what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!(
                        "{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    ));
                }
                let item_ty = self.u32(&what)?;
                let count = self.u64(&what)?;
                // Every item takes at least one byte.
                if count > (self.bytes.len() - self.at) as u64 {
                    return Err(format!(
                        "{what}: an array of {count} items runs past the end of the file"
                    ));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(item_ty, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(&what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            t => {
                return Err(format!(
                    "{what} has value type {t}, which GGUF does not define"
                ))
            }
        })
    }
}
