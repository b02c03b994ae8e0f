//! Writing GGUF files (version 3): the layout [`super`] reads, tensors
//! streamed one at a time into a temporary file renamed into place.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use super::{GgmlType, Value};
use crate::{Error, Result};

/// One tensor to write: its name, format and row-major shape (outermost first).
pub struct OutTensor {
    pub name: String,
    pub kind: GgmlType,
    pub shape: Vec<usize>,
}

impl OutTensor {
    fn bytes(&self) -> Option<usize> {
        self.kind.bytes_for(self.shape.iter().product())
    }
}

fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            // An empty array's element type is not kept by the reader; any will do.
            out.extend(items.first().map_or(8, type_id).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|item| put_value(out, item));
        }
    }
}

/// Writes `path` atomically (it must not exist): `metadata`, then each of
/// `tensors` in order with the bytes `data(index, tensor)` gives for it
/// (checked against its format and shape), aligned to `general.alignment` (default 32).
pub fn write_gguf(
    path: &Path,
    metadata: &BTreeMap<String, Value>,
    tensors: &[OutTensor],
    mut data: impl FnMut(usize, &OutTensor) -> Result<Vec<u8>>,
) -> Result<()> {
    let alignment = metadata
        .get("general.alignment")
        .and_then(Value::as_u64)
        .unwrap_or(32) as usize;
    let mut head = Vec::new();
    head.extend(b"GGUF");
    head.extend(3u32.to_le_bytes());
    head.extend((tensors.len() as u64).to_le_bytes());
    head.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_string(&mut head, key);
        head.extend(type_id(value).to_le_bytes());
        put_value(&mut head, value);
    }
    let mut offset = 0usize;
    for t in tensors {
        let size = t.bytes().ok_or_else(|| Error::Format {
            path: path.display().to_string(),
            message: format!(
                "tensor {} of shape {:?} is not a whole number of {} blocks",
                t.name,
                t.shape,
                t.kind.name()
            ),
        })?;
        put_string(&mut head, &t.name);
        head.extend((t.shape.len() as u32).to_le_bytes());
        // ggml's dims are innermost first.
        t.shape
            .iter()
            .rev()
            .for_each(|&d| head.extend((d as u64).to_le_bytes()));
        head.extend(t.kind.id().to_le_bytes());
        head.extend((offset as u64).to_le_bytes());
        offset = (offset + size).div_ceil(alignment) * alignment;
    }
    head.resize(head.len().div_ceil(alignment) * alignment, 0);
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    crate::io::write_atomically_with(path, |out| {
        out.write_all(&head).map_err(io)?;
        for (i, t) in tensors.iter().enumerate() {
            let bytes = data(i, t)?;
            let size = t.bytes().unwrap_or(0);
            if bytes.len() != size {
                return Err(Error::Format {
                    path: path.display().to_string(),
                    message: format!(
                        "tensor {}: {} bytes given, {size} expected",
                        t.name,
                        bytes.len()
                    ),
                });
            }
            out.write_all(&bytes).map_err(io)?;
            let pad = size.div_ceil(alignment) * alignment - size;
            out.write_all(&vec![0; pad]).map_err(io)?;
        }
        Ok(())
    })
}
