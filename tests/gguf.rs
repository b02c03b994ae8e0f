//! The GGUF reader and its block decoders against gguf-py (the llama.cpp
//! project's Python package): tests/fixtures/gguf/ from tools/gen_gguf_fixture.py.

mod common;

use dora_wgpu::io::gguf::{GgmlType, GgufFile, Value};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf")
        .join(name)
}

fn blocks() -> GgufFile {
    GgufFile::open(&fixture("blocks.gguf")).unwrap()
}

fn json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

/// A metadata value as JSON, for comparison with what gguf-py read.
fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::json;
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => json!(*x as f64),
        Value::F64(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(x) => json!(x),
        Value::Array(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
    }
}

#[test]
fn metadata_reads_as_gguf_py_reads_it() {
    let file = blocks();
    assert_eq!(file.version, 3);
    let expected = json("metadata.json");
    let expected = expected.as_object().unwrap();
    assert_eq!(
        file.metadata.len(),
        expected.len(),
        "{:?}",
        file.metadata.keys()
    );
    for (key, want) in expected {
        let got = file
            .get(key)
            .unwrap_or_else(|| panic!("metadata {key} missing"));
        assert_eq!(&to_json(got), want, "metadata {key}");
    }
}

#[test]
fn tensor_table_matches_gguf_py() {
    let file = blocks();
    let expected = json("tensors.json");
    let expected = expected.as_object().unwrap();
    assert_eq!(file.tensors.len(), expected.len());
    for (name, want) in expected {
        let t = file
            .tensor(name)
            .unwrap_or_else(|| panic!("tensor {name} missing"));
        assert_eq!(t.kind_name(), want["type"].as_str().unwrap(), "{name}");
        let shape: Vec<usize> = want["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape, shape, "{name}");
    }
}

#[test]
fn every_block_format_decodes_bit_for_bit_as_gguf_py() {
    let file = blocks();
    for kind in GgmlType::ALL {
        let (shape, got) = file.tensor_f32(&format!("{}.q", kind.name())).unwrap();
        let (want_shape, want) = file
            .tensor_f32(&format!("{}.expected", kind.name()))
            .unwrap();
        assert_eq!(shape, want_shape, "{}", kind.name());
        assert_eq!(got.len(), want.len());
        let differ = got
            .iter()
            .zip(&want)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        assert!(
            differ.is_none(),
            "{}: value {} is {} (gguf-py: {})",
            kind.name(),
            differ.unwrap(),
            got[differ.unwrap()],
            want[differ.unwrap()]
        );
        // Random blocks: the values are not all alike, so a decoder that
        // ignored a field would not pass by accident.
        assert!(want.iter().any(|v| *v != want[0]), "{}", kind.name());
    }
}

/// Writes `bytes` as `name`.gguf in a fresh temporary folder and opens it.
fn open_bytes(name: &str, bytes: &[u8]) -> dora_wgpu::Result<GgufFile> {
    let path = common::temp_dir(&format!("gguf-{name}")).join(format!("{name}.gguf"));
    std::fs::write(&path, bytes).unwrap();
    GgufFile::open(&path)
}

#[test]
fn damaged_files_are_one_line_errors() {
    let good = std::fs::read(fixture("blocks.gguf")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            good[..good.len() - 100].to_vec(),
            "run past the end",
        ),
        ("header cut", good[..1000].to_vec(), "truncated"),
        (
            "not gguf",
            b"PK\x03\x04 not a gguf file at all".to_vec(),
            "not a GGUF file",
        ),
        (
            "version 1",
            [b"GGUF".as_slice(), &1u32.to_le_bytes(), &[0; 16]].concat(),
            "version 1",
        ),
        (
            "version 9",
            [b"GGUF".as_slice(), &9u32.to_le_bytes(), &[0; 16]].concat(),
            "version 9",
        ),
        (
            "big-endian",
            [b"GGUF".as_slice(), &3u32.to_be_bytes(), &[0; 16]].concat(),
            "big-endian",
        ),
        (
            "huge count",
            [
                b"GGUF".as_slice(),
                &3u32.to_le_bytes(),
                &u64::MAX.to_le_bytes(),
                &[0; 8],
            ]
            .concat(),
            "more than the file can hold",
        ),
    ];
    for (what, bytes, needle) in cases {
        let e = open_bytes(&what.replace(' ', "-"), &bytes)
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        let msg = e.to_string();
        assert!(msg.contains(needle), "{what}: {msg}");
        assert!(!msg.contains('\n'), "{what}: {msg}");
        assert!(
            msg.contains(".gguf"),
            "{what}: the error names the file: {msg}"
        );
    }
}

#[test]
fn a_type_not_read_here_is_named_when_its_tensor_is_asked_for() {
    // Change Q4_0.q's type id in the tensor table to 16 (IQ2_XXS).
    let mut bytes = std::fs::read(fixture("blocks.gguf")).unwrap();
    let name = b"Q4_0.q";
    let at = bytes
        .windows(name.len() + 8)
        .position(|w| w[..8] == (name.len() as u64).to_le_bytes() && &w[8..] == name)
        .unwrap();
    let ty = at + 8 + name.len() + 4 + 2 * 8; // name, n_dims, two dims
    assert_eq!(bytes[ty..ty + 4], 2u32.to_le_bytes());
    bytes[ty..ty + 4].copy_from_slice(&16u32.to_le_bytes());
    let file = open_bytes("unknown-type", &bytes).unwrap();
    let msg = file.tensor_f32("Q4_0.q").unwrap_err().to_string();
    assert!(
        msg.contains("Q4_0.q") && msg.contains("type id 16") && msg.contains("Q4_K"),
        "{msg}"
    );
    assert!(file.tensor_f32("Q4_1.q").is_ok());
}
