#!/usr/bin/env python3
"""Writes tests/fixtures/gguf_model/: the tiny Llama, Qwen3 and Gemma 3 test
models written as GGUF files the way llama.cpp's convert_hf_to_gguf.py writes
them (its tensor names, q/k rows permuted for the `llama` architecture, Gemma's
norms stored as 1 + w, the tokenizer in tokenizer.ggml.*), with their weights
in a mix of block formats, quantize.gguf (random values and gguf-py's
encoding of them in each format `merge --out FILE.gguf` writes), and expected.safetensors + expected.json with the
logits transformers computes from each file's weights.

    pip install torch transformers gguf numpy
    python3 tools/gen_gguf_model_fixture.py

The reference logits come from the transformers model built from the
original config (with what a GGUF file cannot state set as llama.cpp reads
it: Gemma's query_pre_attn_scalar is head_dim, its layers slide but every
sixth) and the weights gguf-py
decodes from the written file, the llama.cpp changes undone in numpy. For
the llama file the script also loads it with
`AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` and requires the
same logits: transformers' own GGUF loader agrees. (For the other two it does
not read everything the file states: Qwen3's head_dim falls back on 128 and
Gemma 3's rope scaling is dropped, so that check is not made there.)
"""
import copy
import json
import os
import sys

import numpy as np
import torch
import gguf
from gguf import GGMLQuantizationType as T
from safetensors.numpy import save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_gguf_tokenizer_fixture as tok  # noqa: E402

FIX = os.path.join(HERE, "..", "tests", "fixtures")
OUT = os.path.join(FIX, "gguf_model")

# Cycled over the 2-D weights so every format the loader reads meets a real layer.
FORMATS = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.F16, T.BF16, T.F32]
IDS = [0, 17, 101, 5, 250, 383, 42, 7, 199, 64, 300, 12]


def permute(w, n_head):
    """llama.cpp's LlamaModel.permute (q: attention heads, k: key-value heads)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_names(arch, layers):
    name_map = gguf.get_tensor_name_map(arch, layers)
    return lambda hf: name_map.get_name(hf, try_suffixes=(".weight", ".bias"))


def decode_file(path, arch, cfg, shapes):
    """The HF tensors `shapes` names as gguf-py decodes them from the GGUF
    file at `path` (float32, llama.cpp's q/k permutation and Gemma's 1 + w
    undone), and each one's stored format. `cfg` is the model's config.json."""
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    to_gguf = gguf_names(arch, cfg["num_hidden_layers"])
    by_gguf = {t.name: t for t in gguf.GGUFReader(path).tensors}
    decoded, formats = {}, {}
    for hf_name, shape in shapes.items():
        if hf_name == "lm_head.weight" and cfg.get("tie_word_embeddings"):
            continue
        g = to_gguf(hf_name)
        t = by_gguf[g]
        v = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        if arch == gguf.MODEL_ARCH.LLAMA and ".attn_q." in g:
            v = unpermute(v, heads)
        if arch == gguf.MODEL_ARCH.LLAMA and ".attn_k." in g:
            v = unpermute(v, kv)
        if arch == gguf.MODEL_ARCH.GEMMA3 and "norm.weight" in g:
            v = v - 1
        decoded[hf_name] = torch.from_numpy(np.ascontiguousarray(v))
        formats[hf_name] = t.tensor_type.name
    return decoded, formats


def write(name, model_dir, arch_name, arch, pre, eos):
    cfg = json.load(open(os.path.join(FIX, "models", model_dir, "config.json")))
    model = AutoModelForCausalLM.from_pretrained(os.path.join(FIX, "models", model_dir), dtype=torch.float32)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    path = os.path.join(OUT, name)
    w = gguf.GGUFWriter(path, arch_name)
    w.add_name(model_dir)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(head_dim)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    rope = cfg.get("rope_parameters") or {}
    full = rope.get("full_attention", rope)
    w.add_rope_freq_base(full.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    if full.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(full["factor"])
    if cfg.get("sliding_window"):
        w.add_sliding_window(cfg["sliding_window"])

    tokens, added, merges, tcfg = tok.load_hf(f"models/{model_dir}")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(tok.byte_level_types(tokens, added))
    w.add_token_merges(merges)
    w.add_uint32("tokenizer.ggml.bos_token_id", 0)
    w.add_uint32("tokenizer.ggml.eos_token_id", eos)
    w.add_uint32("tokenizer.ggml.padding_token_id", 0)
    w.add_bool("tokenizer.ggml.add_bos_token", False)
    if tcfg.get("chat_template"):
        w.add_chat_template(tcfg["chat_template"])

    to_gguf = gguf_names(arch, cfg["num_hidden_layers"])
    formats = {}
    k = 0
    for hf_name, t in state.items():
        if hf_name == "lm_head.weight" and cfg.get("tie_word_embeddings"):
            continue
        g = to_gguf(hf_name)
        assert g is not None, hf_name
        stored = t.astype(np.float32)
        if arch == gguf.MODEL_ARCH.LLAMA and ".attn_q." in g:
            stored = permute(stored, heads)
        if arch == gguf.MODEL_ARCH.LLAMA and ".attn_k." in g:
            stored = permute(stored, kv)
        if arch == gguf.MODEL_ARCH.GEMMA3 and "norm.weight" in g:
            stored = stored + 1
        qtype = T.F32
        if stored.ndim == 2:
            qtype = FORMATS[k % len(FORMATS)]
            k += 1
        data = gguf.quants.quantize(stored, qtype) if qtype != T.F32 else stored
        w.add_tensor(g, data, raw_dtype=qtype)
        formats[g] = qtype.name
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # The reference: what gguf-py decodes from the file, the changes undone.
    decoded, _ = decode_file(path, arch, cfg, {k: v.shape for k, v in state.items()})
    config = AutoConfig.from_pretrained(os.path.join(FIX, "models", model_dir))
    if arch == gguf.MODEL_ARCH.GEMMA3:
        config.query_pre_attn_scalar = head_dim
        # llama.cpp's fixed Gemma 3 pattern: every 6th layer full, the rest sliding.
        config.layer_types = [
            "full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(config.num_hidden_layers)
        ]
    ref = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = ref.load_state_dict(decoded, strict=False)
    assert not unexpected and all(m == "lm_head.weight" for m in missing), (missing, unexpected)
    if cfg.get("tie_word_embeddings"):
        ref.tie_weights()
    ref.eval()
    ids = torch.tensor([IDS])
    with torch.no_grad():
        logits = ref(ids).logits[0].numpy()
    record = {"formats": formats, "ids": IDS}
    if arch == gguf.MODEL_ARCH.LLAMA:
        hf = AutoModelForCausalLM.from_pretrained(OUT, gguf_file=name, dtype=torch.float32)
        with torch.no_grad():
            theirs = hf(ids).logits[0].numpy()
        diff = float(np.abs(theirs - logits).max())
        assert diff < 1e-4, f"{name}: transformers' GGUF loader differs by {diff}"
        record["transformers_gguf_max_abs_diff"] = diff
        text = "Hello world, the keeper asks."
        t = AutoTokenizer.from_pretrained(OUT, gguf_file=name)
        record["text"] = text
        record["text_ids"] = t(text)["input_ids"]
    return logits, record


def quantize_fixture():
    """quantize.gguf: for each format merge writes, `<type>.source` (F32,
    random rows with a zero block, a constant block and ties) and `<type>.q`,
    the same values quantized by gguf-py."""
    rng = np.random.default_rng(7)
    src = rng.standard_normal((6, 64)).astype(np.float32) * np.float32(0.05)
    src[1, :32] = 0
    src[2, 32:] = np.float32(0.25)
    src[3, :4] = [0.5, -0.5, 0.5, -0.5]
    src[4] *= 1000
    w = gguf.GGUFWriter(os.path.join(OUT, "quantize.gguf"), "llama")
    for qtype in [T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]:
        w.add_tensor(f"{qtype.name}.source", src)
        w.add_tensor(f"{qtype.name}.q", gguf.quants.quantize(src, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    os.makedirs(OUT, exist_ok=True)
    quantize_fixture()
    torch.manual_seed(0)
    tensors, records = {}, {}
    for name, model_dir, arch_name, arch, pre, eos in [
        ("tiny-llama.gguf", "tiny-llama", "llama", gguf.MODEL_ARCH.LLAMA, "smollm", 2),
        ("tiny-qwen3.gguf", "tiny-qwen3", "qwen3", gguf.MODEL_ARCH.QWEN3, "qwen2", 2),
        ("tiny-gemma3.gguf", "tiny-gemma3", "gemma3", gguf.MODEL_ARCH.GEMMA3, "smollm", 2),
    ]:
        logits, record = write(name, model_dir, arch_name, arch, pre, eos)
        tensors[name] = np.ascontiguousarray(logits)
        records[name] = record
        print(name, logits.shape, sorted(set(record["formats"].values())))
    save_file(tensors, os.path.join(OUT, "expected.safetensors"))
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(records, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
