#!/usr/bin/env python3
"""Writes the reference fixtures the Rust tests compare against.

    pip install torch peft safetensors && python3 tools/gen_fixtures.py

(numpy is needed too; pip brings it with peft/transformers.) The script re-runs
itself with PYTHONHASHSEED=0 so that adapter_config.json is reproducible.

Everything runs on the CPU, in float32, from fixed seeds; fixtures are
committed under tests/fixtures/ so that CI needs no Python. Re-running this
script must reproduce them byte for byte.

  adamw.json                       torch.optim.AdamW steps on given gradients
  peft_layers.{json,safetensors}   one PEFT LoRA/DoRA Linear per config: inputs,
                                   outputs, gradients, 3 AdamW steps, merged weight
  peft_adapter/                    adapter_model.safetensors + adapter_config.json
                                   as written by PEFT's save_pretrained (Tiny model)
  peft_adapter_io.safetensors      Tiny's base weights, inputs, PEFT outputs and
                                   merged weights per adapted module
  rust_adapter_peft_outputs.safetensors
                                   only when tests/fixtures/rust_adapter/ exists
                                   (written by the Rust side): PEFT's outputs with
                                   that adapter loaded via PeftModel.from_pretrained
"""
import copy
import json
import math
import os
import pathlib
import shutil
import sys
import tempfile

import torch

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def adamw_fixture():
    """Several steps of torch.optim.AdamW on given gradients, per config."""
    g = torch.Generator().manual_seed(0)
    cases = []
    configs = [
        dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1),
        dict(lr=5e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.0),
        dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2),  # torch defaults
    ]
    for cfg in configs:
        shapes = [[5], [3, 4], [33]]
        params = [torch.randn(s, generator=g, dtype=torch.float32) for s in shapes]
        init = [p.clone() for p in params]
        params = [torch.nn.Parameter(p) for p in params]
        opt = torch.optim.AdamW(params, foreach=False, **cfg)
        steps = []
        for _ in range(5):
            grads = [torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.5 for p in params]
            for p, gr in zip(params, grads):
                p.grad = gr.clone()
            opt.step()
            steps.append(
                dict(
                    grads=[gr.flatten().tolist() for gr in grads],
                    params=[p.detach().flatten().tolist() for p in params],
                )
            )
        cases.append(
            dict(
                config=dict(lr=cfg["lr"], beta1=cfg["betas"][0], beta2=cfg["betas"][1],
                            eps=cfg["eps"], weight_decay=cfg["weight_decay"]),
                shapes=shapes,
                init=[p.flatten().tolist() for p in init],
                steps=steps,
            )
        )
    return dict(torch_version=torch.__version__, cases=cases)


# --------------------------------------------------------------------------
# PEFT fixtures
# --------------------------------------------------------------------------

ADAMW = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, steps=3)

# name, in, out, r, lora_alpha, use_dora, use_rslora, bias, base_dtype, x_shape
LAYER_CONFIGS = [
    ("dora_f32_bias_r4", 37, 29, 4, 8, True, False, True, "f32", [7, 37]),
    ("dora_f32_nobias_r1_rslora", 16, 9, 1, 2, True, True, False, "f32", [7, 16]),
    ("dora_f32_bias_r16_rslora", 65, 33, 16, 32, True, True, True, "f32", [2, 5, 65]),
    ("dora_f32_nobias_r16", 20, 70, 16, 16, True, False, False, "f32", [7, 20]),
    ("dora_bf16_bias_r4", 37, 29, 4, 8, True, False, True, "bf16", [7, 37]),
    ("dora_bf16_nobias_r16_rslora", 65, 33, 16, 32, True, True, False, "bf16", [7, 65]),
    ("lora_f32_bias_r4", 37, 29, 4, 8, False, False, True, "f32", [7, 37]),
    ("lora_f32_nobias_r16_rslora", 65, 33, 16, 32, False, True, False, "f32", [7, 65]),
]

# Float64 hand check of PEFT against the documented formula: max abs deviation,
# relative to max(1, max |reference|) of the tensor compared.
HAND_CHECK_TOL = 1e-5


def _uniform(shape, lo, hi, g):
    return torch.rand(shape, generator=g, dtype=torch.float32) * (hi - lo) + lo


def _init_linear(lin, g, bf16=False):
    """W ~ U(-1/sqrt(in), 1/sqrt(in)), b ~ U(-0.1, 0.1); optionally bf16-rounded."""
    out_f, in_f = lin.weight.shape
    bound = 1.0 / math.sqrt(in_f)
    w = _uniform((out_f, in_f), -bound, bound, g)
    b = _uniform((out_f,), -0.1, 0.1, g) if lin.bias is not None else None
    if bf16:
        w = w.to(torch.bfloat16).to(torch.float32)
        b = b.to(torch.bfloat16).to(torch.float32) if b is not None else None
    with torch.no_grad():
        lin.weight.copy_(w)
        if b is not None:
            lin.bias.copy_(b)


def _set_adapter(layer, g):
    """Overwrite a PEFT LoRA layer's adapter with seeded non-trivial values."""
    a = layer.lora_A["default"].weight
    b = layer.lora_B["default"].weight
    with torch.no_grad():
        a.copy_(_uniform(a.shape, -0.5, 0.5, g))
        b.copy_(_uniform(b.shape, -0.5, 0.5, g))
        if "default" in layer.lora_magnitude_vector:
            s = layer.scaling["default"]
            w = layer.get_base_layer().weight
            norm = torch.linalg.norm(w + s * (b @ a), dim=1)
            m = layer.lora_magnitude_vector["default"].weight
            m.copy_(norm * _uniform(norm.shape, 0.8, 1.2, g))


def _adapter_params(layer):
    ps = [layer.lora_A["default"].weight, layer.lora_B["default"].weight]
    if "default" in layer.lora_magnitude_vector:
        ps.append(layer.lora_magnitude_vector["default"].weight)
    return ps


def _hand_forward(x, w, b, a, bb, m, s):
    """The documented formula, in whatever dtype the inputs have.

    DoRA: y = (m / ||W + s B A||_row) * (x W^T + s (x A^T) B^T) + b, norm detached.
    LoRA: y = x W^T + b + s (x A^T) B^T.
    """
    base = x @ w.T
    lora = (x @ a.T) @ bb.T * s
    if m is not None:
        norm = torch.linalg.norm(w + s * (bb @ a), dim=1).detach()
        y = (m / norm) * (base + lora)
    else:
        y = base + lora
    if b is not None:
        y = y + b
    return y


def _hand_merged(w, a, bb, m, s):
    delta = s * (bb @ a)
    if m is None:
        return w + delta
    norm = torch.linalg.norm(w + delta, dim=1)
    return (m / norm).unsqueeze(1) * (w + delta)


def _maxdiff(p, q):
    """Max abs deviation of p from the float64 reference q, over max(1, max |q|)."""
    q = q.detach().double()
    return (p.double() - q).abs().max().item() / max(1.0, q.abs().max().item())


class _One(torch.nn.Module):
    def __init__(self, in_f, out_f, bias):
        super().__init__()
        self.lin = torch.nn.Linear(in_f, out_f, bias=bias)

    def forward(self, x):
        return self.lin(x)


def peft_layers_fixture():
    import peft
    from peft import LoraConfig, get_peft_model

    tensors = {}
    configs = []
    report = {}
    for idx, (name, in_f, out_f, r, alpha, dora, rslora, bias, dt, xshape) in enumerate(LAYER_CONFIGS):
        torch.manual_seed(1000 + idx)  # PEFT/nn.Linear default inits (all overwritten below)
        g = torch.Generator().manual_seed(2000 + idx)
        model = _One(in_f, out_f, bias)
        _init_linear(model.lin, g, bf16=(dt == "bf16"))
        cfg = LoraConfig(r=r, lora_alpha=alpha, use_dora=dora, use_rslora=rslora,
                         target_modules=["lin"], lora_dropout=0.0, bias="none")
        pm = get_peft_model(model, cfg)
        layer = pm.base_model.model.lin
        _set_adapter(layer, g)
        s = float(layer.scaling["default"])
        x = torch.randn(xshape, generator=g, dtype=torch.float32)
        rr = torch.randn(xshape[:-1] + [out_f], generator=g, dtype=torch.float32)

        base = layer.get_base_layer()
        w0 = base.weight.detach().clone()
        b0 = base.bias.detach().clone() if bias else None
        a0 = layer.lora_A["default"].weight.detach().clone()
        bb0 = layer.lora_B["default"].weight.detach().clone()
        m0 = layer.lora_magnitude_vector["default"].weight.detach().clone() if dora else None

        # merge on a copy holding the initial adapter values
        merged = copy.deepcopy(pm).merge_and_unload().lin.weight.detach().clone()

        # one forward/backward from the initial values
        params = _adapter_params(layer)
        xg = x.clone().requires_grad_(True)
        y = pm(xg)
        (y * rr).sum().backward()
        grads = [p.grad.detach().clone() for p in params]
        grad_x = xg.grad.detach().clone()
        y = y.detach().clone()

        # float64 hand check: output, gradients, merge
        d = lambda t: None if t is None else t.double().clone().requires_grad_(True)
        hx, ha, hb, hm = d(x), d(a0), d(bb0), d(m0)
        hy = _hand_forward(hx, w0.double(), None if b0 is None else b0.double(), ha, hb, hm, s)
        (hy * rr.double()).sum().backward()
        dev = dict(y=_maxdiff(y, hy), grad_x=_maxdiff(grad_x, hx.grad),
                   grad_lora_A=_maxdiff(grads[0], ha.grad), grad_lora_B=_maxdiff(grads[1], hb.grad))
        if dora:
            dev["grad_magnitude"] = _maxdiff(grads[2], hm.grad)
        hmerged = _hand_merged(w0.double(), a0.double(), bb0.double(),
                               None if m0 is None else m0.double(), s)
        dev["merged_weight"] = _maxdiff(merged, hmerged)
        for k, v in dev.items():
            assert v < HAND_CHECK_TOL, f"{name}: PEFT {k} deviates from the formula by {v}"
        report[name] = dev

        # 3 AdamW steps from the initial values, same x and R each step
        for p in params:
            p.grad = None
        opt = torch.optim.AdamW(params, lr=ADAMW["lr"], betas=(ADAMW["beta1"], ADAMW["beta2"]),
                                eps=ADAMW["eps"], weight_decay=ADAMW["weight_decay"], foreach=False)
        for step in range(ADAMW["steps"]):
            opt.zero_grad()
            yy = pm(x)
            (yy * rr).sum().backward()
            if step == 0:
                for p, gr in zip(params, grads):
                    assert torch.equal(p.grad, gr), f"{name}: first-step gradient not reproducible"
            opt.step()

        t = {"weight": w0, "lora_A": a0, "lora_B": bb0, "x": x, "grad_out": rr, "y": y,
             "grad_lora_A": grads[0], "grad_lora_B": grads[1], "grad_x": grad_x,
             "step3_lora_A": params[0], "step3_lora_B": params[1], "merged_weight": merged}
        if bias:
            t["bias"] = b0
        if dora:
            t.update(magnitude=m0, grad_magnitude=grads[2], step3_magnitude=params[2])
        for k, v in t.items():
            v = v.detach()
            assert v.dtype == torch.float32, (name, k, v.dtype)
            tensors[f"{name}.{k}"] = v.contiguous().clone()

        c = {"name": name, "in": in_f, "out": out_f, "r": r, "lora_alpha": alpha,
             "use_dora": dora, "use_rslora": rslora, "bias": bias, "base_dtype": dt,
             "x_shape": xshape, "scaling": s}
        if dt == "bf16":
            c["note"] = "bf16-rounded base values, computed in f32"
        configs.append(c)

    meta = {"peft_version": peft.__version__, "torch_version": torch.__version__,
            "adamw": ADAMW, "configs": configs}
    return meta, tensors, report


class _Attn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = torch.nn.Linear(24, 16, bias=True)
        self.v_proj = torch.nn.Linear(24, 8, bias=False)


class _Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.down_proj = torch.nn.Linear(20, 24, bias=False)


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = _Attn()
        self.mlp = _Mlp()


class _Inner(torch.nn.Module):
    def __init__(self, n_layers=2):
        super().__init__()
        self.layers = torch.nn.ModuleList([_Block() for _ in range(n_layers)])


class Tiny(torch.nn.Module):
    """Shaped like an HF Llama path layout: model.layers.N.{self_attn.{q,v}_proj, mlp.down_proj}."""

    def __init__(self):
        super().__init__()
        self.model = _Inner()

    def forward(self, x):  # never used: the adapted modules are called one by one
        raise NotImplementedError


TINY_TARGETS = ["q_proj", "v_proj", "down_proj"]


def _tiny_module_paths():
    return [f"model.layers.{i}.{sub}" for i in range(2)
            for sub in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")]


def _lora_layers(pm):
    """{module path relative to Tiny: PEFT LoRA layer}, in module order."""
    from peft.tuners.lora import LoraLayer
    inner = pm.base_model.model
    return {n: m for n, m in inner.named_modules() if isinstance(m, LoraLayer)}


def peft_adapter_fixture(adapter_dir):
    """Saves a PEFT DoRA adapter for Tiny; returns the io tensors and saved key names."""
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open

    torch.manual_seed(3000)
    g = torch.Generator().manual_seed(3001)
    tiny = Tiny()
    paths = _tiny_module_paths()
    for p in paths:
        _init_linear(tiny.get_submodule(p), g)
    cfg = LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=TINY_TARGETS,
                     lora_dropout=0.0)
    pm = get_peft_model(tiny, cfg)
    layers = _lora_layers(pm)
    assert list(layers) == paths, list(layers)
    for p in paths:
        _set_adapter(layers[p], g)
    pm.eval()

    tensors = {}
    with torch.no_grad():
        for p in paths:
            base = layers[p].get_base_layer()
            tensors[f"{p}.weight"] = base.weight.detach().clone()
            if base.bias is not None:
                tensors[f"{p}.bias"] = base.bias.detach().clone()
            x = torch.randn((5, base.in_features), generator=g, dtype=torch.float32)
            tensors[f"x.{p}"] = x
            tensors[f"y.{p}"] = pm.base_model.model.get_submodule(p)(x).detach().clone()
        merged_model = copy.deepcopy(pm).merge_and_unload()
        for p in paths:
            tensors[f"merged.{p}"] = merged_model.get_submodule(p).weight.detach().clone()
            # hand check: merged weight reproduces PEFT's output
            lay = layers[p]
            b = lay.get_base_layer().bias
            ym = tensors[f"x.{p}"] @ tensors[f"merged.{p}"].T + (0 if b is None else b)
            dv = _maxdiff(ym, tensors[f"y.{p}"])
            assert dv < HAND_CHECK_TOL, f"{p}: merged output deviates by {dv}"

    adapter_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pm.save_pretrained(tmp)
        for f in ("adapter_model.safetensors", "adapter_config.json"):
            shutil.copyfile(pathlib.Path(tmp) / f, adapter_dir / f)
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as f:
        keys = sorted(f.keys())
    expected = []
    for p in paths:
        pre = f"base_model.model.{p}."
        expected += [pre + "lora_A.weight", pre + "lora_B.weight", pre + "lora_magnitude_vector"]
    if sorted(expected) != keys:
        print("NOTE: PEFT's saved key names differ from the expected layout:")
    return {k: v.contiguous() for k, v in tensors.items()}, keys


def rust_adapter_outputs(io_path, adapter_dir, out_path):
    """Loads a PEFT-format adapter written by the Rust side into Tiny; records PEFT's outputs."""
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    if not (adapter_dir / "adapter_model.safetensors").exists():
        print(f"skip: {adapter_dir} has no adapter_model.safetensors (written by the Rust side)")
        return
    io = load_file(str(io_path))
    torch.manual_seed(4000)
    tiny = Tiny()
    paths = _tiny_module_paths()
    with torch.no_grad():
        for p in paths:
            lin = tiny.get_submodule(p)
            lin.weight.copy_(io[f"{p}.weight"])
            if lin.bias is not None:
                lin.bias.copy_(io[f"{p}.bias"])
    pm = PeftModel.from_pretrained(tiny, str(adapter_dir))
    pm.eval()

    # PEFT only warns about missing/unexpected keys; fail loudly instead, since a
    # missing key would leave PEFT's random init in place.
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as f:
        file_keys = set(f.keys())
    model_keys = set(get_peft_model_state_dict(pm).keys())
    if file_keys != model_keys:
        raise SystemExit(f"rust adapter keys mismatch: missing {sorted(model_keys - file_keys)}, "
                         f"unexpected {sorted(file_keys - model_keys)}")

    layers = _lora_layers(pm)
    loaded = sorted(p for p, lay in layers.items() if "default" in lay.lora_A)
    out = {}
    with torch.no_grad():
        for p in loaded:
            x = io[f"x.{p}"]
            out[f"y.{p}"] = pm.base_model.model.get_submodule(p)(x).detach().contiguous().clone()
    save_file(out, str(out_path), metadata={"loaded_modules": json.dumps(loaded)})
    print(f"wrote {out_path} (loaded modules: {loaded})")


def main():
    from safetensors.torch import save_file

    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "adamw.json"
    path.write_text(json.dumps(adamw_fixture()) + "\n")
    print(f"wrote {path}")

    meta, tensors, report = peft_layers_fixture()
    save_file(tensors, str(OUT / "peft_layers.safetensors"))
    (OUT / "peft_layers.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {OUT / 'peft_layers.safetensors'} and peft_layers.json")
    print("float64 hand-check max deviations (abs / max(1, max|ref|)):")
    for name, dev in report.items():
        print(f"  {name}: " + ", ".join(f"{k}={v:.2e}" for k, v in dev.items()))

    io, keys = peft_adapter_fixture(OUT / "peft_adapter")
    save_file(io, str(OUT / "peft_adapter_io.safetensors"))
    print(f"wrote {OUT / 'peft_adapter'} (keys: {keys}) and peft_adapter_io.safetensors")

    rust_adapter_outputs(OUT / "peft_adapter_io.safetensors", OUT / "rust_adapter",
                         OUT / "rust_adapter_peft_outputs.safetensors")


if __name__ == "__main__":
    # PEFT keeps target_modules as a set, so the order it writes them into
    # adapter_config.json follows Python's per-process string hashing; pin it.
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable] + sys.argv,
                  dict(os.environ, PYTHONHASHSEED="0"))
    main()
