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
  data/eval.jsonl                  eval lines in the three formats (text,
                                   prompt/completion, messages)
  models/tiny-llama/               random LlamaForCausalLM (f32, tied, rope_parameters)
  models/tiny-qwen2/               random Qwen2ForCausalLM (bf16, 2 shards, q/k/v
                                   biases, untied, old-style top-level rope_theta)
  models/tiny-*-dora/              PEFT DoRA adapters trained 10 AdamW steps
  models/reference.{json,safetensors}
                                   transformers/PEFT logits, eval losses, greedy
                                   generations, merged weights, tokenizer ids
(the models section needs transformers and tokenizers as well.)
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


# --------------------------------------------------------------------------
# Tiny HF models: tokenizer, two random models, eval data, DoRA adapters and
# reference numbers (tests/fixtures/models/, tests/fixtures/data/)
# --------------------------------------------------------------------------

MODELS_OUT = OUT / "models"
DATA_OUT = OUT / "data"

# Tokenizer training text: original sentences written for this script (no
# outside source), dedicated to the public domain.
TOKENIZER_TEXT = """\
The quick brown fox jumps over the lazy dog. The dog does not care; it is asleep in the sun.
Every morning the small red hen walks across the farm yard, and every evening she walks back.
The fox lives at the edge of the old forest, where the river turns and the hills begin.
In the spring the river is wide and cold, and in the summer it is slow and warm.
A farmer and his daughter keep the farm. They grow wheat, beans and apples, and they keep bees.
The daughter likes to count things: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 apples in a basket,
12 hens in the yard, 365 days in a year, and 3.14 for the circle she draws in the sand.
When the fox comes near the farm at night, the dog wakes up and barks, and the fox runs home.
The hen is not afraid of the fox. She knows the dog is there, and she knows the fence is high.
Questions and answers: What color is the hen? The hen is red. Where does the fox live? In the forest.
The assistant answers the user. The user asks a question, and the assistant gives a short answer.
You are a helpful assistant. Tell me about the fox. Tell me about the hen. Tell me about the farm.
This is a small text for a small tokenizer, so that the tests can run quickly on any computer.
"""

TOK_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOK_VOCAB_SIZE = 384
TOK_MAX_LENGTH = 256

# SmolLM2's ChatML template.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROJ_PATHS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]

LOGITS_TEXT = "The quick brown fox jumps over the lazy dog. 12345 ünïcödé"
GEN_MESSAGES = [{"role": "user", "content": "Tell me about the fox."}]
GEN_MAX_NEW = 20
TOKENIZER_PARITY_STRINGS = [
    "Hello world",
    "  leading and   multiple   spaces\n\nnewlines\t tabs",
    "digits 0123456789 and 3.14159",
    "unicode: ünïcödé — 日本語 😀",
    "<|im_start|>user\nhi<|im_end|>",
    "",
]
CHAT_PARITY_MESSAGES = [
    {"role": "user", "content": "Where does the fox live?"},
    {"role": "assistant", "content": "At the edge of the old forest."},
    {"role": "user", "content": "And the hen?"},
]

EVAL_LINES = [
    {"text": "The quick brown fox jumps over the lazy dog."},
    {"prompt": "Question: What color is the hen?\nAnswer:", "completion": " The hen is red."},
    {"messages": [
        {"role": "system", "content": "You are a short and friendly assistant."},
        {"role": "user", "content": "Where does the fox live?"},
        {"role": "assistant", "content": "At the edge of the old forest."},
        {"role": "user", "content": "And the hen?"},
        {"role": "assistant", "content": "On the farm, with the dog."},
    ]},
    {"text": "Every morning the small red hen walks across the farm yard, and every evening she walks back."},
    {"prompt": "Count from one: 1, 2, 3,", "completion": " 4, 5, 6."},
    {"messages": [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi! 👋"},
    ]},
    {"text": "Zürich café: naïve résumé — 1,234.56 € on 2024-03-14, 日本語 😀."},
]

ADAPTER_TRAIN = dict(lr=1e-2, steps=10, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
MODEL_SPECS = {
    "tiny-llama": dict(
        arch="LlamaForCausalLM", bos_post_processor=False, chat_template_file=False,
        base_dtype="float32", seed=5000,
        config=dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    tie_word_embeddings=True, rms_norm_eps=1e-5, max_position_embeddings=256,
                    rope_parameters={"rope_theta": 20000.0, "rope_type": "default"},
                    initializer_range=0.1, bos_token_id=0, eos_token_id=2)),
    "tiny-qwen2": dict(
        arch="Qwen2ForCausalLM", bos_post_processor=True, chat_template_file=True,
        base_dtype="bfloat16", seed=6000,
        config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2,
                    tie_word_embeddings=False, rms_norm_eps=1e-6, max_position_embeddings=256,
                    rope_theta=1000000.0, initializer_range=0.1, bos_token_id=0,
                    eos_token_id=2)),
}
# Sharding for the bf16 model (~250 kB of weights).
QWEN2_MAX_SHARD = "150KB"
INIT_STD = 0.1


def _train_tokenizer():
    """Byte-level BPE on TOKENIZER_TEXT; returns the tokenizers.Tokenizer (no post-processor set)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TOK_VOCAB_SIZE, min_frequency=2,
                                  special_tokens=TOK_SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TOKENIZER_TEXT.splitlines(), trainer=trainer)
    for i, s in enumerate(TOK_SPECIAL):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    assert tok.get_vocab_size() == TOK_VOCAB_SIZE, tok.get_vocab_size()
    return tok


def _write_tokenizer(base_tok, out_dir, bos_post_processor, chat_template_file):
    """tokenizer.json + tokenizer_config.json (+ chat_template.jinja)."""
    from tokenizers import Tokenizer, processors

    tok = Tokenizer.from_str(base_tok.to_str())
    byte_level = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True)
    if bos_post_processor:
        # Llama-3 style: ByteLevel offsets + TemplateProcessing that prepends BOS.
        bos = TOK_SPECIAL[0]
        tok.post_processor = processors.Sequence([
            byte_level,
            processors.TemplateProcessing(single=f"{bos} $A:0", pair=f"{bos} $A:0 {bos}:1 $B:1",
                                          special_tokens=[(bos, 0)]),
        ])
    else:
        tok.post_processor = byte_level  # adds no tokens (SmolLM2/GPT-2 style)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": TOK_SPECIAL[0],
        "eos_token": TOK_SPECIAL[2],
        "pad_token": TOK_SPECIAL[0],
        "unk_token": None,
        "model_max_length": TOK_MAX_LENGTH,
        "clean_up_tokenization_spaces": False,
    }
    if chat_template_file:
        (out_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    else:
        cfg["chat_template"] = CHAT_TEMPLATE
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n",
                                                   encoding="utf-8")


def _init_tiny_weights(model, seed):
    """Every parameter from one seeded generator, independent of transformers' own init:
    matrices and embeddings N(0, INIT_STD), biases N(0, INIT_STD), RMSNorm weights 1 + N(0, INIT_STD)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            v = torch.randn(p.shape, generator=g, dtype=torch.float32) * INIT_STD
            if "norm" in name:
                v = v + 1.0
            p.copy_(v)


def _eval_examples(tok):
    """Per eval line: ids and the scored target positions (position t is predicted from t-1)."""
    out = []
    for line in EVAL_LINES:
        if "text" in line:
            ids = tok(line["text"], add_special_tokens=True)["input_ids"]
            targets = list(range(1, len(ids)))
            fmt = "text"
        elif "prompt" in line:
            p = tok(line["prompt"], add_special_tokens=True)["input_ids"]
            c = tok(line["completion"], add_special_tokens=False)["input_ids"]
            ids = p + c
            targets = list(range(max(1, len(p)), len(ids)))
            fmt = "prompt_completion"
        else:
            msgs = line["messages"]
            full = tok.apply_chat_template(msgs, tokenize=False)
            ids = tok(full, add_special_tokens=False)["input_ids"]
            targets = []
            for i, m in enumerate(msgs):
                if m["role"] != "assistant":
                    continue
                pre = tok.apply_chat_template(msgs[:i], add_generation_prompt=True, tokenize=False)
                upto = tok.apply_chat_template(msgs[:i + 1], tokenize=False)
                pre_ids = tok(pre, add_special_tokens=False)["input_ids"]
                upto_ids = tok(upto, add_special_tokens=False)["input_ids"]
                # the prefixes must tokenize as prefixes of the full sequence
                assert ids[:len(pre_ids)] == pre_ids and ids[:len(upto_ids)] == upto_ids
                assert full.startswith(upto) and upto.startswith(pre)
                targets += range(len(pre_ids), len(upto_ids))
            fmt = "messages"
        assert targets and all(1 <= t < len(ids) for t in targets)
        out.append(dict(format=fmt, ids=ids, targets=targets))
    return out


def _show_masks(name, tok, examples):
    print(f"eval masks for {name} ([scored] tokens):")
    for ex in examples:
        tset = set(ex["targets"])
        parts = []
        for t, i in enumerate(ex["ids"]):
            s = tok.decode([i])
            parts.append(f"[{s}]" if t in tset else s)
        print(f"  {ex['format']:18s} {''.join(parts)!r}")


def _check_masks(tok, examples):
    """The scored tokens decode to exactly the completion / assistant turns."""
    im_end = tok.convert_tokens_to_ids(TOK_SPECIAL[2])
    for line, ex in zip(EVAL_LINES, examples):
        scored = tok.decode([ex["ids"][t] for t in ex["targets"]])
        if "prompt" in line:
            assert scored == line["completion"], (scored, line)
        elif "messages" in line:
            want = "".join(m["content"] + "<|im_end|>\n" for m in line["messages"] if m["role"] == "assistant")
            assert scored == want, (scored, want)
            n_ass = sum(m["role"] == "assistant" for m in line["messages"])
            assert sum(ex["ids"][t] == im_end for t in ex["targets"]) == n_ass
        else:
            bos = tok.bos_token_id
            body = ex["ids"][1:] if ex["ids"][0] == bos else ex["ids"]
            assert [ex["ids"][t] for t in ex["targets"]] == ex["ids"][1:]
            assert tok.decode(body) == line["text"]


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def _eval_loss(model, examples):
    """Token-weighted mean NLL over all scored targets (log-softmax in float64)."""
    nll_total, count, per_line = 0.0, 0, []
    for ex in examples:
        logp = torch.log_softmax(_logits(model, ex["ids"]).double(), dim=-1)
        nll = sum(-logp[t - 1, ex["ids"][t]].item() for t in ex["targets"])
        per_line.append(dict(nll_sum=nll, tokens=len(ex["targets"])))
        nll_total += nll
        count += len(ex["targets"])
    loss = nll_total / count
    return dict(loss=loss, ppl=math.exp(loss), tokens=count, per_line=per_line)


def _generate(model, tok):
    prompt = tok.apply_chat_template(GEN_MESSAGES, add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=GEN_MAX_NEW,
                             do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    new = out[0, len(ids):].tolist()
    stopped = bool(new) and new[-1] == tok.eos_token_id
    # cached greedy decoding == argmax of a full forward over the whole sequence
    full = _logits(model, ids + new)[len(ids) - 1:len(ids) - 1 + len(new)]
    assert full.argmax(-1).tolist() == new, "generate() differs from argmax"
    top2 = full.topk(2, dim=-1).values
    margin = (top2[:, 0] - top2[:, 1]).min().item()
    assert margin > 1e-3, f"greedy step too close to a tie ({margin})"
    return dict(prompt=prompt, prompt_ids=ids, generated_ids=new, generated_text=tok.decode(new),
                stopped_at_eos=stopped, max_new_tokens=GEN_MAX_NEW, min_top2_logit_margin=margin)


def _train_adapter(base, tok, seed, adapter_dir, base_name):
    """PEFT DoRA on all 7 projections, AdamW for a few steps on the eval text lines."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=TARGET_MODULES, lora_dropout=0.0)
    pm = get_peft_model(base, cfg)
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=ADAPTER_TRAIN["lr"], betas=ADAPTER_TRAIN["betas"],
                            eps=ADAPTER_TRAIN["eps"], weight_decay=ADAPTER_TRAIN["weight_decay"],
                            foreach=False)
    seqs = [tok(line["text"], add_special_tokens=True)["input_ids"] for line in EVAL_LINES if "text" in line]
    pm.train()
    losses = []
    for _ in range(ADAPTER_TRAIN["steps"]):
        opt.zero_grad()
        total, n = 0.0, 0
        for ids in seqs:
            logits = pm(input_ids=torch.tensor([ids])).logits[0].float()
            total = total + torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]),
                                                              reduction="sum")
            n += len(ids) - 1
        loss = total / n
        loss.backward()
        opt.step()
        losses.append(loss.item())
    pm.eval()
    pm.peft_config["default"].base_model_name_or_path = base_name
    adapter_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pm.save_pretrained(tmp)
        for f in ("adapter_model.safetensors", "adapter_config.json"):
            shutil.copyfile(pathlib.Path(tmp) / f, adapter_dir / f)
    return pm, losses


def _rewrite_config_old_rope(path):
    """Rewrite a transformers-5 config.json into the pre-5 layout (top-level rope_theta,
    rope_scaling, torch_dtype), as e.g. Qwen2.5 checkpoints ship it."""
    cfg = json.loads(path.read_text())
    rope = cfg.pop("rope_parameters")
    assert rope == {"rope_theta": rope["rope_theta"], "rope_type": "default"}, rope
    cfg["rope_theta"] = rope["rope_theta"]
    cfg["rope_scaling"] = None
    cfg["torch_dtype"] = cfg.pop("dtype")
    cfg.pop("layer_types", None)  # derived from use_sliding_window/max_window_layers
    path.write_text(json.dumps(dict(sorted(cfg.items())), indent=2) + "\n")


def tiny_models_fixture():
    """Writes tests/fixtures/models/ and tests/fixtures/data/eval.jsonl."""
    import warnings

    with warnings.catch_warnings():
        # PEFT calls a transformers method that transformers 5 deprecates
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        _tiny_models_fixture()


def _tiny_models_fixture():
    import peft
    import safetensors
    import tokenizers
    import transformers
    from peft import PeftModel
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    f32, bf16 = torch.float32, torch.bfloat16
    load = dict(attn_implementation="eager")

    DATA_OUT.mkdir(parents=True, exist_ok=True)
    eval_path = DATA_OUT / "eval.jsonl"
    eval_path.write_text("".join(json.dumps(l, ensure_ascii=False) + "\n" for l in EVAL_LINES),
                         encoding="utf-8")

    base_tok = _train_tokenizer()
    ref = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "tokenizers": tokenizers.__version__,
                     "safetensors": safetensors.__version__},
        "notes": {
            "numbers": "CPU, attn_implementation=eager, base weights loaded with dtype=float32 "
                       "(tiny-qwen2's bf16 weights upcast at load); DoRA adapters loaded with "
                       "PeftModel.from_pretrained on that float32 base.",
            "logits_bf16": "tiny-qwen2 only: logits with the model loaded with dtype=bfloat16 "
                           "(its stored dtype), adapter weights float32 as PEFT keeps them; "
                           "bf16 logits stored as float32.",
            "eval_loss": "sum over the file of -log softmax(logits[t-1])[ids[t]] over scored "
                         "targets t, divided by the number of scored targets; log_softmax in float64 "
                         "of float32 logits. eval.<M>.lines[i].targets lists the scored positions t.",
            "merged": "merge_and_unload() of the DoRA adapter on the base in its stored dtype "
                      "(float32 / bfloat16); merged_f32 (tiny-qwen2 only) merges on the float32-upcast base.",
            "tensors": "reference.safetensors",
        },
        "eval_file": "tests/fixtures/data/eval.jsonl",
        "logits_text": LOGITS_TEXT,
        "models": {}, "tokenizer": {}, "eval": {}, "logits": {}, "logits_bf16": {},
        "eval_loss": {}, "generate": {}, "merged": {}, "adapter_training": {},
    }
    tensors = {}

    for name, spec in MODEL_SPECS.items():
        mdir = MODELS_OUT / name
        adir = MODELS_OUT / f"{name}-dora"
        for d in (mdir, adir):
            if d.exists():
                shutil.rmtree(d)
        _write_tokenizer(base_tok, mdir, spec["bos_post_processor"], spec["chat_template_file"])
        tok = AutoTokenizer.from_pretrained(str(mdir))
        assert len(tok) == TOK_VOCAB_SIZE, len(tok)
        assert tok.chat_template == CHAT_TEMPLATE, "chat template not picked up"
        assert [tok.convert_tokens_to_ids(s) for s in TOK_SPECIAL] == [0, 1, 2]
        assert tok.eos_token_id == 2 and tok.bos_token_id == 0 and tok.pad_token_id == 0

        # ---- model
        cls = getattr(transformers, spec["arch"])
        config = cls.config_class(vocab_size=TOK_VOCAB_SIZE, **spec["config"])
        torch.manual_seed(spec["seed"])
        model = cls(config).to(f32)
        model.set_attn_implementation(load["attn_implementation"])
        _init_tiny_weights(model, spec["seed"] + 1)
        model.generation_config.pad_token_id = 0
        model.generation_config.bos_token_id = 0
        model.generation_config.eos_token_id = 2
        model.eval()
        if spec["base_dtype"] == "bfloat16":
            # round the parameters only: model.to(bf16) would also round buffers such as
            # RoPE's inv_freq, which a reload recomputes in float32
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(p.to(bf16).to(f32))
        ids = tok(LOGITS_TEXT, add_special_tokens=True)["input_ids"]
        mem_logits = _logits(model, ids)  # what every reload must reproduce
        if spec["base_dtype"] == "bfloat16":
            model = model.to(bf16)
            model.save_pretrained(str(mdir), max_shard_size=QWEN2_MAX_SHARD)
            _rewrite_config_old_rope(mdir / "config.json")
            index = json.loads((mdir / "model.safetensors.index.json").read_text())
            shards = sorted(set(index["weight_map"].values()))
            assert len(shards) >= 2, shards
            assert sorted(p.name for p in mdir.glob("model-*.safetensors")) == shards
            assert not (mdir / "model.safetensors").exists()
        else:
            model.save_pretrained(str(mdir))
            assert (mdir / "model.safetensors").exists()
            assert not (mdir / "model.safetensors.index.json").exists()
        cfg_json = json.loads((mdir / "config.json").read_text())
        if name == "tiny-llama":
            assert cfg_json["rope_parameters"]["rope_theta"] == 20000.0 and "rope_theta" not in cfg_json
            assert cfg_json["tie_word_embeddings"] is True
        else:
            assert cfg_json["rope_theta"] == 1000000.0 and "rope_parameters" not in cfg_json
            assert cfg_json["tie_word_embeddings"] is False and cfg_json["torch_dtype"] == "bfloat16"
        loaded_cfg = AutoConfig.from_pretrained(str(mdir))
        theta = spec["config"].get("rope_theta") or spec["config"]["rope_parameters"]["rope_theta"]
        assert loaded_cfg.rope_parameters["rope_theta"] == theta, loaded_cfg.rope_parameters
        assert loaded_cfg.rope_parameters["rope_type"] == "default"
        for k, v in spec["config"].items():
            if k not in ("rope_theta", "rope_parameters"):
                assert getattr(loaded_cfg, k) == v, (k, getattr(loaded_cfg, k), v)

        if spec["bos_post_processor"]:
            assert ids[0] == 0 and tok(LOGITS_TEXT, add_special_tokens=False)["input_ids"] == ids[1:]
        else:
            assert ids == tok(LOGITS_TEXT, add_special_tokens=False)["input_ids"]
        del model

        # ---- tokenizer parity
        from tokenizers import Tokenizer as RawTokenizer
        raw = RawTokenizer.from_file(str(mdir / "tokenizer.json"))
        tinfo = {"vocab_size": len(tok),
                 "special_tokens": {s: tok.convert_tokens_to_ids(s) for s in TOK_SPECIAL},
                 "bos_token": tok.bos_token, "eos_token": tok.eos_token, "pad_token": tok.pad_token,
                 "post_processor_adds_bos": spec["bos_post_processor"],
                 "chat_template_in": "chat_template.jinja" if spec["chat_template_file"]
                 else "tokenizer_config.json",
                 "strings": []}
        for s in TOKENIZER_PARITY_STRINGS:
            w = tok(s, add_special_tokens=True)["input_ids"]
            wo = tok(s, add_special_tokens=False)["input_ids"]
            assert raw.encode(s, add_special_tokens=True).ids == w, s
            assert raw.encode(s, add_special_tokens=False).ids == wo, s
            assert tok.decode(wo) == s, (s, tok.decode(wo))
            tinfo["strings"].append({"text": s, "ids_with_special": w, "ids_without_special": wo})
        chat = {}
        for agp in (False, True):
            r = tok.apply_chat_template(CHAT_PARITY_MESSAGES, add_generation_prompt=agp, tokenize=False)
            chat["with_generation_prompt" if agp else "without_generation_prompt"] = {
                "text": r, "ids": tok(r, add_special_tokens=False)["input_ids"]}
        tinfo["chat_template"] = {"messages": CHAT_PARITY_MESSAGES, **chat}
        ref["tokenizer"][name] = tinfo

        # ---- eval examples
        examples = _eval_examples(tok)
        _check_masks(tok, examples)
        if name == "tiny-llama" or spec["bos_post_processor"]:
            _show_masks(name, tok, examples)
        ref["eval"][name] = {"lines": examples}

        # ---- base model numbers (reloaded from disk, float32)
        base = AutoModelForCausalLM.from_pretrained(str(mdir), dtype=f32, **load).eval()
        assert type(base).__name__ == spec["arch"]
        if spec["config"]["tie_word_embeddings"]:
            assert base.lm_head.weight.data_ptr() == base.model.embed_tokens.weight.data_ptr()
        logits = _logits(base, ids)
        assert torch.equal(logits, mem_logits), "reloaded base logits differ from the saved model"
        tensors[f"logits.{name}.none"] = logits.contiguous()
        ref["logits"][name] = {"ids": ids, "shape": list(logits.shape), "none": f"logits.{name}.none"}
        ref["eval_loss"][name] = {"none": _eval_loss(base, examples)}
        ref["generate"][name] = {"none": _generate(base, tok)}
        del base

        # ---- adapter, trained on the base as stored (bf16 for tiny-qwen2)
        stored = AutoModelForCausalLM.from_pretrained(str(mdir), dtype=getattr(torch, spec["base_dtype"]),
                                                      **load)
        pm_train, losses = _train_adapter(stored, tok, spec["seed"] + 2, adir,
                                          f"tests/fixtures/models/{name}")
        train_logits = _logits(pm_train, ids)
        with safe_open(str(adir / "adapter_model.safetensors"), "pt") as f:
            akeys = sorted(f.keys())
            adtypes = sorted({str(f.get_tensor(k).dtype).replace("torch.", "") for k in akeys})
            bmax = max(f.get_tensor(k).abs().max().item() for k in akeys if "lora_B" in k)
        assert len(akeys) == 3 * 7 * spec["config"]["num_hidden_layers"], akeys
        assert bmax > 0, "lora_B stayed zero"
        ref["adapter_training"][name] = {
            **{k: list(v) if isinstance(v, tuple) else v for k, v in ADAPTER_TRAIN.items()},
            "data": "the text lines of eval.jsonl, ids with add_special_tokens=True, every token a target, "
                    "loss = summed cross entropy / number of targets, one full batch per step",
            "base_dtype_during_training": spec["base_dtype"], "seed": spec["seed"] + 2,
            "losses": losses, "saved_dtypes": adtypes, "max_abs_lora_B": bmax, "keys": akeys}
        del pm_train, stored

        # ---- adapter numbers (float32 base)
        base = AutoModelForCausalLM.from_pretrained(str(mdir), dtype=f32, **load)
        pm = PeftModel.from_pretrained(base, str(adir)).eval()
        logits = _logits(pm, ids)
        if spec["base_dtype"] == "float32":
            assert torch.equal(logits, train_logits), "reloaded adapter logits differ"
        assert not torch.allclose(logits, tensors[f"logits.{name}.none"], atol=1e-3), "adapter has no effect"
        tensors[f"logits.{name}.dora"] = logits.contiguous()
        ref["logits"][name]["dora"] = f"logits.{name}.dora"
        ref["eval_loss"][name]["dora"] = _eval_loss(pm, examples)
        ref["generate"][name]["dora"] = _generate(pm, tok)
        merged = {}
        if spec["base_dtype"] != "float32":
            m32 = pm.merge_and_unload()
            for l in range(spec["config"]["num_hidden_layers"]):
                for p in PROJ_PATHS:
                    for k, v in m32.model.layers[l].get_submodule(p).state_dict().items():
                        key = f"model.layers.{l}.{p}.{k}"
                        tensors[f"merged_f32.{name}.{key}"] = v.detach().to(f32).contiguous().clone()
            merged_logits = _logits(m32, ids)
            assert (merged_logits - logits).abs().max().item() < 1e-3
        del pm, base

        # ---- stored-dtype base: bf16 logits and the merge in the stored dtype
        sdt = getattr(torch, spec["base_dtype"])
        if sdt != f32:
            b16 = AutoModelForCausalLM.from_pretrained(str(mdir), dtype=bf16, **load).eval()
            default = AutoModelForCausalLM.from_pretrained(str(mdir), **load)
            ref["models"].setdefault(name, {})["default_load_dtype"] = str(default.dtype).replace("torch.", "")
            del default
            tensors[f"logits_bf16.{name}.none"] = _logits(b16, ids).contiguous()
            pm16 = PeftModel.from_pretrained(b16, str(adir)).eval()
            l16 = _logits(pm16, ids)
            assert torch.equal(l16, train_logits), "reloaded adapter (bf16 base) logits differ from training"
            tensors[f"logits_bf16.{name}.dora"] = l16.contiguous()
            ref["logits_bf16"][name] = {"none": f"logits_bf16.{name}.none", "dora": f"logits_bf16.{name}.dora",
                                        "max_abs_diff_vs_f32": {
                                            s: (tensors[f"logits_bf16.{name}.{s}"]
                                                - tensors[f"logits.{name}.{s}"]).abs().max().item()
                                            for s in ("none", "dora")}}
            sbase = AutoModelForCausalLM.from_pretrained(str(mdir), dtype=sdt, **load)
        else:
            sbase = AutoModelForCausalLM.from_pretrained(str(mdir), dtype=f32, **load)
        merged_model = PeftModel.from_pretrained(sbase, str(adir)).merge_and_unload().eval()
        for l in range(spec["config"]["num_hidden_layers"]):
            for p in PROJ_PATHS:
                for k, v in merged_model.model.layers[l].get_submodule(p).state_dict().items():
                    assert v.dtype == sdt, (p, k, v.dtype)
                    key = f"model.layers.{l}.{p}.{k}"
                    tensors[f"merged.{name}.{key}"] = v.detach().contiguous().clone()
                    merged.setdefault("params", []).append(key)
        ml = _logits(merged_model, ids)
        merged["dtype"] = spec["base_dtype"]
        merged["max_abs_logit_diff_vs_dora"] = (ml - tensors[f"logits.{name}.dora"]).abs().max().item()
        if sdt == f32:
            assert merged["max_abs_logit_diff_vs_dora"] < 1e-4, merged
        if spec["base_dtype"] != "float32":
            merged["f32_prefix"] = f"merged_f32.{name}."
        ref["merged"][name] = merged
        del merged_model, sbase

        ref["models"].setdefault(name, {}).update({
            "dir": f"tests/fixtures/models/{name}", "adapter_dir": f"tests/fixtures/models/{name}-dora",
            "architecture": spec["arch"], "stored_dtype": spec["base_dtype"],
            "reference_dtype": "float32", "config": cfg_json,
            "files": sorted(p.name for p in mdir.iterdir()),
            "adapter_config": json.loads((adir / "adapter_config.json").read_text()),
            "rope_theta_loaded": loaded_cfg.rope_parameters["rope_theta"],
        })
        print(f"wrote {mdir} and {adir}: eval loss none={ref['eval_loss'][name]['none']['loss']:.4f} "
              f"dora={ref['eval_loss'][name]['dora']['loss']:.4f}; adapter dtypes {adtypes}; "
              f"train losses {losses[0]:.4f} -> {losses[-1]:.4f}")

    save_file(tensors, str(MODELS_OUT / "reference.safetensors"))
    (MODELS_OUT / "reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    print(f"wrote {MODELS_OUT / 'reference.json'} and reference.safetensors ({len(tensors)} tensors)")
    torch.set_num_threads(threads)


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

    tiny_models_fixture()


def run_with_pinned_hash_seed(main):
    """PEFT keeps target_modules as a set, so the order it writes them into
    adapter_config.json follows Python's per-process string hashing: rerun
    this process with the seed pinned, then run `main`."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable] + sys.argv,
                  dict(os.environ, PYTHONHASHSEED="0"))
    main()


if __name__ == "__main__":
    run_with_pinned_hash_seed(main)
