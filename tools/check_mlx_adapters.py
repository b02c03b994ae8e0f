#!/usr/bin/env python3
"""Checks `dora-wgpu convert` against MLX-LM's own adapter code, both ways.

    pip install "mlx[cpu]" mlx-lm torch transformers peft safetensors
    cargo build && python3 tools/check_mlx_adapters.py [target/debug/dora-wgpu]

1. PEFT -> MLX-LM: the tiny Llama 3 fixture's PEFT DoRA adapter is converted;
   each module is loaded into MLX-LM's DoRALinear, whose fuse() and forward
   must equal PEFT's merge_and_unload() weights (tests/fixtures/models/families.*).
2. MLX-LM -> PEFT: MLX-LM puts DoRA layers on the model (linear_to_lora_layers,
   the last layer, three modules), its parameters are moved off their
   initial values and saved as its trainer saves them; dora-wgpu converts the
   directory; PEFT's merge_and_unload() must equal MLX-LM's fuse().
Whole-model logits are not compared: MLX-LM's model code already differs
from transformers' on these tiny random configs without any adapter.
"""
import json
import pathlib
import subprocess
import sys
import tempfile

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import safetensors.torch
import torch
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm import load
from mlx_lm.tuner.dora import DoRALinear
from mlx_lm.tuner.utils import linear_to_lora_layers
from peft import PeftModel
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "fixtures" / "models"
TOL = 1e-6


def convert(cli, *args):
    r = subprocess.run([cli, "convert", *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"dora-wgpu convert failed: {r.stderr.strip()}")


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def peft_to_mlx(cli, tmp):
    out = tmp / "to-mlx"
    convert(cli, "--from", "peft", "--to", "mlx", "--adapter", MODELS / "tiny-llama3-dora",
            "--out", out, "--model", MODELS / "tiny-llama3")
    cfg = json.loads((out / "adapter_config.json").read_text())["lora_parameters"]
    adapter = load_file(out / "adapters.safetensors")
    base = load_file(MODELS / "tiny-llama3" / "model.safetensors")
    merged = {k: v.float().numpy() for k, v in safetensors.torch.load_file(MODELS / "families.safetensors").items()
              if k.startswith("merged.tiny-llama3.")}
    rng = np.random.default_rng(0)
    worst_fuse = worst_forward = 0.0
    modules = [k[: -len(".lora_a")] for k in adapter if k.endswith(".lora_a")]
    for module in modules:
        w = base[module + ".weight"]
        linear = nn.Linear(w.shape[1], w.shape[0], bias=False)
        linear.weight = mx.array(w)
        layer = DoRALinear.from_base(linear, r=cfg["rank"], scale=cfg["scale"])
        layer.lora_a = mx.array(adapter[module + ".lora_a"])
        layer.lora_b = mx.array(adapter[module + ".lora_b"])
        layer.m = mx.array(adapter[module + ".m"])
        want = merged[f"merged.tiny-llama3.{module}.weight"]
        worst_fuse = max(worst_fuse, rel(np.array(layer.fuse().weight), want))
        x = rng.standard_normal((5, w.shape[1])).astype(np.float32)
        worst_forward = max(worst_forward, rel(np.array(layer(mx.array(x))), x @ want.T))
    print(f"PEFT -> MLX-LM: {len(modules)} modules in MLX-LM's DoRALinear: fuse() vs PEFT merge_and_unload "
          f"max rel {worst_fuse:.2e}, forward vs x·W'ᵀ max rel {worst_forward:.2e}")
    return max(worst_fuse, worst_forward)


def mlx_to_peft(cli, tmp):
    base = MODELS / "tiny-llama3"
    model, _ = load(str(base))
    model.freeze()
    params = {"rank": 4, "scale": 2.5, "dropout": 0.0,
              "keys": ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"]}
    linear_to_lora_layers(model, 1, params, use_dora=True)
    rng = np.random.default_rng(3)
    moved = [(k, mx.array((np.array(v) + 0.05 * rng.standard_normal(v.shape)).astype(np.float32)))
             for k, v in tree_flatten(model.trainable_parameters())]
    model.update(tree_unflatten(moved))
    src = tmp / "mlx"
    src.mkdir()
    mx.save_safetensors(str(src / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    (src / "adapter_config.json").write_text(json.dumps(
        {"fine_tune_type": "dora", "num_layers": 1, "lora_parameters": params}))
    out = tmp / "to-peft"
    convert(cli, "--from", "mlx", "--to", "peft", "--adapter", src, "--out", out, "--model", base)
    hf = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    merged = PeftModel.from_pretrained(hf, str(out)).merge_and_unload().state_dict()
    worst, n = 0.0, 0
    for name, module in model.named_modules():
        if isinstance(module, DoRALinear):
            worst = max(worst, rel(np.array(module.fuse().weight), merged[name + ".weight"].numpy()))
            n += 1
    print(f"MLX-LM -> PEFT: {n} modules: PEFT merge_and_unload vs MLX-LM fuse() max rel {worst:.2e}")
    return worst


def main():
    cli = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "target" / "debug" / "dora-wgpu")
    with tempfile.TemporaryDirectory() as t:
        worst = max(peft_to_mlx(cli, pathlib.Path(t)), mlx_to_peft(cli, pathlib.Path(t)))
    if worst > TOL:
        sys.exit(f"FAIL: max rel {worst:.2e} > {TOL}")
    print("ok")


if __name__ == "__main__":
    main()
