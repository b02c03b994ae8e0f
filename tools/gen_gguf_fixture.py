#!/usr/bin/env python3
"""Writes tests/fixtures/gguf/: a small GGUF file made by gguf-py (the llama.cpp
project's own Python package) and what gguf-py reads back from it.

    pip install gguf numpy
    python3 tools/gen_gguf_fixture.py

blocks.gguf holds, for every block format dora-wgpu decodes, a tensor of
random raw blocks (every bit pattern of the quantized bytes; the f16 scales
drawn finite) named `<type>.q`, and beside it `<type>.expected`: the same
tensor as F32, dequantized by gguf-py's `quants.dequantize`. It also carries
metadata of every GGUF value type; metadata.json lists each key with the value
gguf-py's GGUFReader reads back, and tensors.json each tensor's type and
shape, so the Rust reader is checked against gguf-py, not against itself.
"""
import json
import pathlib

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gguf"

# Byte offsets of each format's f16 scale fields inside one block.
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}


def random_blocks(rng, qtype, rows, blocks_per_row):
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows, blocks_per_row, block_bytes), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        scales = (rng.standard_normal((rows, blocks_per_row)) * 0.05).astype(np.float16)
        raw[:, :, off:off + 2] = scales.view(np.uint8).reshape(rows, blocks_per_row, 2)
    return raw.reshape(rows, blocks_per_row * block_bytes), block_elems * blocks_per_row


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    path = OUT / "blocks.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    # One key of every value type (general.architecture is written by the writer).
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -7)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 0.1)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo, GGUF")
    w.add_uint64("test.u64", 2**63 + 5)
    w.add_int64("test.i64", -(2**62))
    w.add_float64("test.f64", 1.0 / 3.0)
    w.add_array("test.array_i32", [1, -2, 3])
    w.add_array("test.array_str", ["a", "bc", ""])
    w.add_array("test.array_f32", [0.5, -1.25])

    shapes = {}
    for qtype in [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]:
        raw, cols = random_blocks(rng, qtype, rows=3, blocks_per_row=2)
        expected = gguf.quants.dequantize(raw, qtype).astype(np.float32)
        assert expected.shape == (3, cols) and np.isfinite(expected).all()
        w.add_tensor(f"{qtype.name}.q", raw, raw_shape=raw.shape, raw_dtype=qtype)
        w.add_tensor(f"{qtype.name}.expected", expected)
    # Float formats: f16 and bf16 from random values (bf16 as gguf-py rounds it).
    x = rng.standard_normal((2, 64)).astype(np.float32)
    w.add_tensor("F32.q", x)
    w.add_tensor("F32.expected", x)
    h = x.astype(np.float16)
    w.add_tensor("F16.q", h)
    w.add_tensor("F16.expected", h.astype(np.float32))
    b = gguf.quants.quantize(x, T.BF16)
    w.add_tensor("BF16.q", b, raw_shape=b.shape, raw_dtype=T.BF16)
    w.add_tensor("BF16.expected", gguf.quants.dequantize(b, T.BF16).astype(np.float32))
    # A three-dimensional tensor: ggml's dims are innermost first.
    w.add_tensor("cube", rng.standard_normal((2, 3, 32)).astype(np.float32))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # What gguf-py reads back: the reference for the Rust reader.
    r = gguf.GGUFReader(str(path))
    meta = {}
    for field in r.fields.values():
        if field.name.startswith("GGUF."):
            continue  # the header's own counts, not metadata
        meta[field.name] = field.contents()
    tensors = {t.name: {"type": T(t.tensor_type).name, "shape": [int(d) for d in reversed(t.shape)]}
               for t in r.tensors}
    (OUT / "metadata.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    (OUT / "tensors.json").write_text(json.dumps(tensors, indent=1) + "\n")
    print("wrote", path, path.stat().st_size, "bytes,", len(tensors), "tensors")


if __name__ == "__main__":
    main()
