#!/usr/bin/env python3
"""Converts a GGUF file into a Hugging Face directory that dora-wgpu loads,
with transformers' GGUF reader (weights dequantized), until dora-wgpu reads
GGUF itself.

    pip install torch transformers gguf sentencepiece
    python3 tools/gguf_to_hf.py MODEL.gguf OUT_DIR [--dtype bfloat16|float32]

OUT_DIR must not exist. The tokenizer (tokenizer.json, the chat template) is
rebuilt by transformers from the GGUF's own vocabulary.
"""
import argparse
import pathlib
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gguf", type=pathlib.Path)
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    args = ap.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out} already exists; choose a new directory")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(args.gguf.parent), args.gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, args.dtype))
    # The weights are plain tensors now; transformers still marks the model
    # GGUF-quantized and refuses save_pretrained, so write the parts directly.
    from safetensors.torch import save_file

    args.out.mkdir(parents=True)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(str(args.out))
    model.generation_config.save_pretrained(str(args.out))
    # A tied head is stored once, as the embedding (as HF checkpoints are).
    tied = model.config.tie_word_embeddings
    weights = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()
               if not (tied and k == "lm_head.weight")}
    save_file(weights, str(args.out / "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(str(args.out))
    print(f"wrote {args.out}: {type(model).__name__}, {sum(p.numel() for p in model.parameters())} parameters")


if __name__ == "__main__":
    main()
