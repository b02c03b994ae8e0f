#!/usr/bin/env python3
"""Writes reference fixtures for the model families beyond tiny-llama/tiny-qwen2.

    pip install torch "transformers>=5" peft safetensors tokenizers && python3 tools/gen_family_fixtures.py

It reuses gen_fixtures.py's tokenizer, eval lines and helpers (imported as a
module; gen_fixtures.py's own outputs are neither rewritten nor changed) and,
like it, re-runs itself with PYTHONHASHSEED=0 (PEFT writes target_modules from
a set) and runs on the CPU, in float32, one thread, eager attention, from fixed
seeds: running it twice gives byte-identical files.

  rope/rope.{json,safetensors}      transformers' RoPE tables (inv_freq,
                                    attention_scaling, cos/sin of forward) for the
                                    default, linear, dynamic, llama3, yarn (4
                                    variants), partial-rotary and longrope
                                    parameterisations, plus Gemma3's two per-layer
                                    tables; config.json in both rope layouts
  models/tiny-llama3/               LlamaForCausalLM, llama3 rope scaling (f32, tied)
  models/tiny-qwen3/                Qwen3ForCausalLM (bf16, head_dim 32 != 64/4,
                                    q_norm/k_norm, untied)
  models/tiny-gemma3/               Gemma3ForCausalLM (gemma3_text, f32, tied,
                                    sliding window 6 on layers 0-1, linear rope x4
                                    on the full layer, query_pre_attn_scalar 24)
  models/tiny-phi3/                 Phi3ForCausalLM (f32, fused qkv_proj and
                                    gate_up_proj, untied)
  models/tiny-*-dora/               PEFT DoRA adapters trained 10 AdamW steps
  models/tiny-gemma3-dora-init/     PEFT's initial DoRA adapter for tiny-gemma3
                                    (lora_B = 0, magnitude = row norms of W)
  models/families.{json,safetensors}
                                    logits, eval losses, greedy generations,
                                    merged weights, and 4 recorded PEFT training
                                    steps of tiny-gemma3 (same layout as
                                    reference.json)
"""
import copy
import hashlib
import json
import math
import pathlib
import shutil
import sys
import tempfile

import torch

TOOLS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
import gen_fixtures as gf  # noqa: E402

ROOT = TOOLS.parent
OUT = gf.OUT
MODELS_OUT = gf.MODELS_OUT
ROPE_OUT = OUT / "rope"
f32, bf16 = torch.float32, torch.bfloat16
LOAD = dict(attn_implementation="eager")

LLAMA_TARGETS = gf.TARGET_MODULES
LLAMA_PATHS = gf.PROJ_PATHS
PHI3_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
PHI3_PATHS = ["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"]

COMMON = dict(initializer_range=0.1, bos_token_id=0, eos_token_id=2)
GEMMA3_SLIDING_WINDOW = 6
LLAMA3_ORIGINAL_MAX = 16

# norm_init: "one_plus" -> 1 + N(0, 0.1) (x * w norms), "zero_centered" -> N(0, 0.1) (Gemma: x * (1 + w))
FAMILY_SPECS = {
    "tiny-llama3": dict(
        arch="LlamaForCausalLM", base_dtype="float32", seed=7000, norm_init="one_plus",
        targets=LLAMA_TARGETS, proj_paths=LLAMA_PATHS,
        config=dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    tie_word_embeddings=True, rms_norm_eps=1e-5, max_position_embeddings=256,
                    rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": LLAMA3_ORIGINAL_MAX,
                                     "rope_theta": 500000.0},
                    **COMMON)),
    "tiny-qwen3": dict(
        arch="Qwen3ForCausalLM", base_dtype="bfloat16", seed=8000, norm_init="one_plus",
        targets=LLAMA_TARGETS, proj_paths=LLAMA_PATHS,
        config=dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                    tie_word_embeddings=False, rms_norm_eps=1e-6, max_position_embeddings=256,
                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                    attention_bias=False, **COMMON)),
    "tiny-gemma3": dict(
        arch="Gemma3ForCausalLM", base_dtype="float32", seed=9000, norm_init="zero_centered",
        targets=LLAMA_TARGETS, proj_paths=LLAMA_PATHS,
        config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                    query_pre_attn_scalar=24, sliding_window=GEMMA3_SLIDING_WINDOW,
                    layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                    rope_parameters={
                        "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0},
                        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                    hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
                    final_logit_softcapping=None, attn_logit_softcapping=None,
                    rms_norm_eps=1e-6, max_position_embeddings=256, pad_token_id=0, **COMMON)),
    "tiny-phi3": dict(
        arch="Phi3ForCausalLM", base_dtype="float32", seed=11000, norm_init="one_plus",
        targets=PHI3_TARGETS, proj_paths=PHI3_PATHS,
        config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2,
                    tie_word_embeddings=False, rms_norm_eps=1e-5, max_position_embeddings=256,
                    original_max_position_embeddings=256,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                     "partial_rotary_factor": 1.0},
                    pad_token_id=None, **COMMON)),
}

TRAIN_STEPS_MODEL = "tiny-gemma3"
# greedy generations must not hinge on near-ties (the Rust side runs in f32 on a GPU);
# gen_fixtures asserts 1e-3, these fixtures ask for more
GEN_MIN_MARGIN = 1e-2
TRAIN_STEPS = 4


def _sha256(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _init_weights(model, seed, norm_init):
    """Every parameter from one seeded generator: matrices, embeddings and biases N(0, INIT_STD);
    norm weights 1 + N(0, INIT_STD) ("one_plus") or N(0, INIT_STD) ("zero_centered", Gemma's x*(1+w))."""
    g = torch.Generator().manual_seed(seed)
    n_norm = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            v = torch.randn(p.shape, generator=g, dtype=torch.float32) * gf.INIT_STD
            if "norm" in name:
                n_norm += 1
                if norm_init == "one_plus":
                    v = v + 1.0
                else:
                    assert norm_init == "zero_centered", norm_init
            p.copy_(v)
    assert n_norm > 0
    return n_norm


def _build(spec, config=None):
    import transformers

    cls = getattr(transformers, spec["arch"])
    if config is None:
        config = cls.config_class(vocab_size=gf.TOK_VOCAB_SIZE, **copy.deepcopy(spec["config"]))
    torch.manual_seed(spec["seed"])
    model = cls(config).to(f32)
    model.set_attn_implementation(LOAD["attn_implementation"])
    return model


def _variant_logits(spec, state, ids, **overrides):
    """Logits of the same weights under a config with some fields replaced."""
    import transformers

    cls = getattr(transformers, spec["arch"])
    cfg = copy.deepcopy(spec["config"])
    cfg.update(overrides)
    model = _build(spec, cls.config_class(vocab_size=gf.TOK_VOCAB_SIZE, **cfg))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    model.eval()
    return gf._logits(model, ids)


def _lora_config(targets):
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=targets, lora_dropout=0.0)


def _train_seqs(tok):
    return [tok(line["text"], add_special_tokens=True)["input_ids"] for line in gf.EVAL_LINES if "text" in line]


def _train_loss(pm, seqs):
    """gen_fixtures._train_adapter's loss: full batch of the text lines, summed CE / targets."""
    total, n = 0.0, 0
    for ids in seqs:
        logits = pm(input_ids=torch.tensor([ids])).logits[0].float()
        total = total + torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]),
                                                          reduction="sum")
        n += len(ids) - 1
    return total / n


def _save_adapter(pm, adapter_dir, base_name):
    pm.peft_config["default"].base_model_name_or_path = base_name
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    adapter_dir.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        pm.save_pretrained(tmp)
        for f in ("adapter_model.safetensors", "adapter_config.json"):
            shutil.copyfile(pathlib.Path(tmp) / f, adapter_dir / f)


def _train_adapter(base, tok, seed, targets, steps, adapter_dir, base_name, init_dir=None):
    """gen_fixtures._train_adapter with the target modules and step count as parameters
    (same seed handling, optimizer, data and loss); optionally saves the initial adapter."""
    from peft import get_peft_model

    torch.manual_seed(seed)
    pm = get_peft_model(base, _lora_config(targets))
    if init_dir is not None:
        _save_adapter(pm, init_dir, base_name)
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=gf.ADAPTER_TRAIN["lr"], betas=gf.ADAPTER_TRAIN["betas"],
                            eps=gf.ADAPTER_TRAIN["eps"], weight_decay=gf.ADAPTER_TRAIN["weight_decay"],
                            foreach=False)
    seqs = _train_seqs(tok)
    pm.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = _train_loss(pm, seqs)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    pm.eval()
    _save_adapter(pm, adapter_dir, base_name)
    return pm, losses


def _weights_listing(mdir):
    from safetensors import safe_open

    out = []
    for f in sorted(mdir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            for k in sorted(h.keys()):
                t = h.get_slice(k)
                out.append({"name": k, "shape": list(t.get_shape()), "dtype": t.get_dtype(), "file": f.name})
    return sorted(out, key=lambda e: e["name"])


def _sliding_mask_check(config, length):
    """The boolean mask transformers builds for a sliding layer (eager), vs the rule k <= q, q - k < W."""
    from transformers.masking_utils import create_sliding_window_causal_mask

    cfg = copy.deepcopy(config)
    cfg._attn_implementation = "eager"
    mask = create_sliding_window_causal_mask(
        config=cfg, inputs_embeds=torch.zeros(1, length, cfg.hidden_size), attention_mask=None,
        cache=None, position_ids=torch.arange(length)[None], allow_is_causal_skip=False)
    allowed = (mask[0, 0] == 0) if mask.dtype != torch.bool else mask[0, 0]
    w = cfg.sliding_window
    q = torch.arange(length)[:, None]
    k = torch.arange(length)[None, :]
    rule = (k <= q) & (q - k < w)
    assert torch.equal(allowed, rule), (allowed.int(), rule.int())
    return {"length": length, "sliding_window": w,
            "rule": "query q attends key k iff k <= q and q - k < sliding_window "
                    "(a query sees itself and the sliding_window - 1 keys before it)",
            "allowed": allowed.int().tolist()}


# --------------------------------------------------------------------------
# RoPE tables
# --------------------------------------------------------------------------

ROPE_LENGTHS = {"short": 20, "medium": 50, "long": 100}
ROPE_BASE = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=1,
                 intermediate_size=128, vocab_size=gf.TOK_VOCAB_SIZE, bos_token_id=0, eos_token_id=2,
                 pad_token_id=None)
_YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "rope_theta": 10000.0}
ROPE_CASES = {
    "default": dict(family="llama", max_position_embeddings=128,
                    rope={"rope_type": "default", "rope_theta": 10000.0}),
    "linear": dict(family="llama", max_position_embeddings=128,
                   rope={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}),
    "dynamic": dict(family="llama", max_position_embeddings=32,
                    rope={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
    "llama3": dict(family="llama", max_position_embeddings=256,
                   rope={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 32, "rope_theta": 500000.0}),
    # tiny-llama3's rope: original 16, so the highest frequency (wavelength 2*pi) falls in the smoothed band
    "llama3_smooth": dict(family="llama", max_position_embeddings=256,
                          rope={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
                                "rope_theta": 500000.0}),
    "yarn": dict(family="llama", max_position_embeddings=128, rope=dict(_YARN)),
    "yarn_explicit": dict(family="llama", max_position_embeddings=128,
                          rope=dict(_YARN, beta_fast=16.0, beta_slow=2.0, mscale=1.0, mscale_all_dim=0.5)),
    "yarn_attention_factor": dict(family="llama", max_position_embeddings=128,
                                  rope=dict(_YARN, attention_factor=1.25)),
    "yarn_no_truncate": dict(family="llama", max_position_embeddings=128, rope=dict(_YARN, truncate=False)),
    "partial_default": dict(family="phi3", max_position_embeddings=128,
                            rope={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
    "longrope": dict(family="phi3", max_position_embeddings=128, original_max_position_embeddings=32,
                     rope={"rope_type": "longrope", "rope_theta": 10000.0,
                           "short_factor": [1.0, 1.02, 1.05, 1.1, 1.2, 1.35, 1.5, 1.7],
                           "long_factor": [1.0, 1.3, 1.8, 2.5, 3.5, 5.0, 7.0, 9.5]}),
    "gemma3_sliding_attention": dict(family="gemma3", layer_type="sliding_attention"),
    "gemma3_full_attention": dict(family="gemma3", layer_type="full_attention"),
}
# which forward sequences to record: name -> lengths run in order on ONE fresh module (the last is recorded)
ROPE_RUNS_STATIC = {"short": ["short"], "long": ["long"]}
ROPE_RUNS_STATEFUL = {"short": ["short"], "medium": ["medium"], "long": ["long"],
                      "long_then_short": ["long", "short"], "long_then_medium": ["long", "medium"],
                      "short_then_long": ["short", "long"]}


def _rope_classes(family):
    import transformers
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

    return {"llama": (transformers.LlamaConfig, LlamaRotaryEmbedding),
            "phi3": (transformers.Phi3Config, Phi3RotaryEmbedding),
            "gemma3": (transformers.Gemma3TextConfig, Gemma3RotaryEmbedding)}[family]


def _rope_config(case):
    cfg_cls, _ = _rope_classes(case["family"])
    if case["family"] == "gemma3":
        return cfg_cls(vocab_size=gf.TOK_VOCAB_SIZE, **copy.deepcopy(FAMILY_SPECS["tiny-gemma3"]["config"]))
    kw = dict(ROPE_BASE, max_position_embeddings=case["max_position_embeddings"],
              rope_parameters=copy.deepcopy(case["rope"]))
    if case["family"] == "llama":
        kw["head_dim"] = 16
    if "original_max_position_embeddings" in case:
        kw["original_max_position_embeddings"] = case["original_max_position_embeddings"]
    if case["family"] == "phi3" and "original_max_position_embeddings" not in kw:
        kw["original_max_position_embeddings"] = case["max_position_embeddings"]
    return cfg_cls(**kw)


def _old_layout(name, case, cfg_json):
    """config.json in the pre-transformers-5 layout: top-level rope_theta (+ partial_rotary_factor,
    original_max_position_embeddings for Phi-3), rope_scaling holding the rest (or null)."""
    old = {k: v for k, v in cfg_json.items() if k != "rope_parameters"}
    rp = dict(cfg_json["rope_parameters"])
    old["rope_theta"] = rp.pop("rope_theta")
    if case["family"] == "phi3":
        old["partial_rotary_factor"] = rp.pop("partial_rotary_factor")
        rp.pop("original_max_position_embeddings", None)  # Phi-3 keeps it top-level
    if rp["rope_type"] == "default":
        assert list(rp) == ["rope_type"], rp
        old["rope_scaling"] = None
    else:
        if case["family"] == "phi3":
            rp["type"] = rp.pop("rope_type")  # Phi-3 checkpoints write "type"
        old["rope_scaling"] = dict(sorted(rp.items()))
    return dict(sorted(old.items()))


def _yarn_reference(rp, dim):
    """transformers' yarn inv_freq, restated (checked equal to the module's): returns inv_freq, low, high."""
    base, factor = rp["rope_theta"], rp["factor"]
    orig = rp["original_max_position_embeddings"]
    beta_fast, beta_slow = rp.get("beta_fast") or 32, rp.get("beta_slow") or 1

    def correction_dim(n_rot):
        return (dim * math.log(orig / (n_rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rp.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).to(dtype=f32) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    ramp = torch.clamp((torch.arange(dim // 2, dtype=f32) - low) / ((high + 0.001 if low == high else high) - low),
                       0, 1)
    extrapolation_factor = 1 - ramp
    inv = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor
    return inv, low, high


def _llama3_bands(rp, dim, inv_freq):
    """Which llama3 band each frequency falls in ("high": kept, "low": / factor, "medium": smoothed);
    the inv_freq restated from them is checked equal to the module's."""
    base, factor = rp["rope_theta"], rp["factor"]
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=f32) / dim))
    old = rp["original_max_position_embeddings"]
    lff, hff = rp["low_freq_factor"], rp["high_freq_factor"]
    wavelen = 2 * math.pi / inv
    bands = ["high" if w < old / hff else "low" if w > old / lff else "medium" for w in wavelen.tolist()]
    smooth = (old / wavelen - lff) / (hff - lff)
    low = torch.where(wavelen > old / lff, inv / factor, inv)
    medium = (1 - smooth) * low / factor + smooth * low
    want = torch.stack([low[i] if b != "medium" else medium[i] for i, b in enumerate(bands)])
    assert torch.equal(want, inv_freq), (want, inv_freq)
    return bands


def _module_state(mod, layer_type):
    if layer_type is None:
        return mod.inv_freq.detach().clone(), float(mod.attention_scaling)
    return (getattr(mod, f"{layer_type}_inv_freq").detach().clone(),
            float(getattr(mod, f"{layer_type}_attention_scaling")))


def _rope_forward(mod, length, layer_type):
    x = torch.zeros(1, length, 8, dtype=f32)
    pos = torch.arange(length)[None]
    with torch.no_grad():
        if layer_type is None:
            cos, sin = mod(x, pos)
        else:
            cos, sin = mod(x, pos, layer_type)
    assert cos.dtype == f32 and cos.shape[0] == 1
    return cos[0].contiguous().clone(), sin[0].contiguous().clone()


def rope_fixture():
    import transformers
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    tensors, cases = {}, {}
    for name, case in ROPE_CASES.items():
        cfg_cls, mod_cls = _rope_classes(case["family"])
        layer_type = case.get("layer_type")
        config = _rope_config(case)
        with tempfile.TemporaryDirectory() as tmp:
            config.save_pretrained(tmp)
            cfg_json = json.loads((pathlib.Path(tmp) / "config.json").read_text())
        cfg_json.pop("transformers_version")
        rope_written = cfg_json["rope_parameters"]
        rp = rope_written[layer_type] if layer_type else rope_written
        rope_type = rp["rope_type"]
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        rotary_dim = int(head_dim * rp.get("partial_rotary_factor", 1.0))

        def fresh(cfg=config):
            return mod_cls(copy.deepcopy(cfg))

        mod = fresh()
        inv_freq, scaling = _module_state(mod, layer_type)
        assert inv_freq.dtype == f32 and inv_freq.shape == (rotary_dim // 2,), (name, inv_freq.shape)
        # the module's buffer is what the init function returns
        kw = {"layer_type": layer_type} if layer_type else {}
        if rope_type == "default":
            ref_inv, ref_scale = mod_cls.compute_default_rope_parameters(copy.deepcopy(config), **kw)
        else:
            ref_inv, ref_scale = ROPE_INIT_FUNCTIONS[rope_type](copy.deepcopy(config), **kw)
        assert torch.equal(ref_inv, inv_freq) and ref_scale == scaling, name
        tensors[f"{name}.inv_freq"] = inv_freq

        entry = {"module": f"{mod_cls.__module__}.{mod_cls.__name__}", "model_type": cfg_json["model_type"],
                 "layer_type": layer_type, "hidden_size": config.hidden_size,
                 "num_attention_heads": config.num_attention_heads, "head_dim": head_dim,
                 "rotary_dim": rotary_dim, "max_position_embeddings": config.max_position_embeddings,
                 "rope_type": rope_type, "rope_parameters": rp, "config_json": cfg_json,
                 "inv_freq": f"{name}.inv_freq", "attention_scaling": scaling}

        # the pre-5 layout must load to the same parameters and tables
        if case["family"] != "gemma3":
            old = _old_layout(name, case, cfg_json)
            with tempfile.TemporaryDirectory() as tmp:
                (pathlib.Path(tmp) / "config.json").write_text(json.dumps(old, indent=2) + "\n")
                old_cfg = AutoConfig.from_pretrained(tmp)
            assert type(old_cfg) is cfg_cls, type(old_cfg)
            # a legacy "type" key stays in the loaded dict beside the "rope_type" copied from it
            loaded_rp = {k: v for k, v in old_cfg.rope_parameters.items() if k != "type"}
            assert loaded_rp == config.rope_parameters, (name, old_cfg.rope_parameters, config.rope_parameters)
            old_inv, old_scale = _module_state(mod_cls(old_cfg), None)
            assert torch.equal(old_inv, inv_freq) and old_scale == scaling, name
            entry["config_json_old"] = old
        else:
            entry["config_json_old"] = None

        if rope_type == "yarn":
            yinv, ylow, yhigh = _yarn_reference(rp, rotary_dim)
            assert torch.equal(yinv, inv_freq), name
            entry["yarn_correction_range"] = [ylow, yhigh]
        elif rope_type == "llama3":
            entry["llama3_bands"] = _llama3_bands(rp, rotary_dim, inv_freq)

        stateful = rope_type in ("dynamic", "longrope")
        runs = ROPE_RUNS_STATEFUL if stateful else ROPE_RUNS_STATIC
        fwd = {}
        for run, seq in runs.items():
            m = fresh()
            for length_name in seq:
                cos, sin = _rope_forward(m, ROPE_LENGTHS[length_name], layer_type)
            length = ROPE_LENGTHS[seq[-1]]
            assert cos.shape == (length, rotary_dim), (name, cos.shape)
            inv_after, scale_after = _module_state(m, layer_type)
            # cos/sin are cat(freqs, freqs).cos() * attention_scaling with freqs = pos * inv_freq (float32)
            freqs = torch.arange(length, dtype=f32)[:, None] * inv_after[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            assert torch.equal(cos, emb.cos() * scale_after) and torch.equal(sin, emb.sin() * scale_after), name
            pre = f"{name}.{run}"
            tensors[f"{pre}.cos"], tensors[f"{pre}.sin"], tensors[f"{pre}.inv_freq"] = cos, sin, inv_after
            fwd[run] = {"sequence": [ROPE_LENGTHS[s] for s in seq], "positions": length,
                        "shape": list(cos.shape), "cos": f"{pre}.cos", "sin": f"{pre}.sin",
                        "inv_freq_after": f"{pre}.inv_freq", "attention_scaling_after": scale_after,
                        "inv_freq_changed": not torch.equal(inv_after, inv_freq)}
        entry["forward"] = fwd
        if rope_type == "dynamic":
            assert fwd["long"]["inv_freq_changed"] and not fwd["short"]["inv_freq_changed"]
            assert fwd["medium"]["inv_freq_changed"]
            assert torch.equal(tensors[f"{name}.long_then_short.cos"], tensors[f"{name}.short.cos"])
            assert torch.equal(tensors[f"{name}.long_then_short.inv_freq"], inv_freq)
            # medium after long keeps the long inv_freq (no growth, no reset)
            assert torch.equal(tensors[f"{name}.long_then_medium.inv_freq"], tensors[f"{name}.long.inv_freq"])
            assert not torch.equal(tensors[f"{name}.long_then_medium.cos"], tensors[f"{name}.medium.cos"])
            assert torch.equal(tensors[f"{name}.short_then_long.cos"], tensors[f"{name}.long.cos"])
            # the long inv_freq is the init function at seq_len = max(position) + 1
            re_inv, _ = ROPE_INIT_FUNCTIONS["dynamic"](copy.deepcopy(config), seq_len=ROPE_LENGTHS["long"])
            assert torch.equal(re_inv, tensors[f"{name}.long.inv_freq"])
        elif rope_type == "longrope":
            assert fwd["long"]["inv_freq_changed"] and not fwd["short"]["inv_freq_changed"]
            assert torch.equal(tensors[f"{name}.long_then_short.cos"], tensors[f"{name}.short.cos"])
            assert torch.equal(tensors[f"{name}.medium.inv_freq"], tensors[f"{name}.long.inv_freq"])
        else:
            assert not fwd["long"]["inv_freq_changed"]
        cases[name] = entry

    # scaling types differ from default where they should
    d = tensors["default.inv_freq"]
    for n in ("linear", "yarn"):
        assert not torch.equal(tensors[f"{n}.inv_freq"], d), n
    assert torch.equal(tensors["linear.inv_freq"], d / 4.0)
    assert not torch.equal(tensors["yarn_no_truncate.inv_freq"], tensors["yarn.inv_freq"])
    assert cases["yarn_attention_factor"]["attention_scaling"] == 1.25
    exp_af = (0.1 * 1.0 * math.log(4.0) + 1.0) / (0.1 * 0.5 * math.log(4.0) + 1.0)
    assert cases["yarn_explicit"]["attention_scaling"] == float(exp_af)
    assert cases["yarn"]["attention_scaling"] == 0.1 * math.log(4.0) + 1.0
    # Llama's default rope ignores partial_rotary_factor (Phi-3's honours it)
    lcfg = _rope_config(dict(family="llama", max_position_embeddings=128,
                             rope={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}))
    _, lcls = _rope_classes("llama")
    llama_partial = lcls(lcfg).inv_freq
    assert llama_partial.shape == (8,) and torch.equal(llama_partial, d)

    meta = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "notes": {
            "tensors": "rope.safetensors, float32; every name below is a key there",
            "lengths": "forward runs use position_ids = arange(L)[None] with L from `lengths`; cos/sin are "
                       "the module's outputs with the batch dimension squeezed: [L, rotary_dim]",
            "definitions": "freqs[p, i] = p * inv_freq[i] (float32 product), emb = cat(freqs, freqs) over the "
                           "last dim, cos = cos(emb) * attention_scaling, sin = sin(emb) * attention_scaling. "
                           "apply: x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x[d/2:], x[:d/2]) on the "
                           "first rotary_dim dims (Phi-3 passes the remaining head_dim - rotary_dim dims through).",
            "inv_freq": "the module's inv_freq buffer right after construction (== the ROPE_INIT_FUNCTIONS entry, "
                        "or compute_default_rope_parameters for 'default'); default: 1 / theta^(arange(0, d, 2) / d) "
                        "with d = rotary_dim",
            "forward": "forward.<run>: a FRESH module per run; `sequence` lists the lengths passed to forward in "
                       "order, the recorded cos/sin and inv_freq_after are those of the last call. Static types "
                       "record short and long only.",
            "dynamic": "transformers' dynamic NTK keeps state: at forward, seq_len = max(position_ids) + 1; if "
                       "seq_len > max_seq_len_cached (initially max_position_embeddings) inv_freq is recomputed with "
                       "base' = theta * (factor * seq_len / max_pos - (factor - 1))^(d / (d - 2)) and "
                       "max_seq_len_cached = seq_len; if seq_len < max_position_embeddings and max_seq_len_cached > "
                       "max_position_embeddings it resets to the original inv_freq. So long_then_short == short, "
                       "but long_then_medium (medium > max_pos, < long) keeps the long inv_freq and differs from a "
                       "fresh medium run. seq_len == max_position_embeddings after a long run does NOT reset.",
            "longrope": "Phi-3 longrope: at forward, inv_freq = 1 / (factor_list * theta^(arange(0,d,2)/d)) with "
                        "long_factor if max(position_ids) + 1 > original_max_position_embeddings, else short_factor; "
                        "stateless choice per call. attention_scaling = sqrt(1 + ln(factor) / ln(original_max)) with "
                        "factor = max_position_embeddings / original_max_position_embeddings, applied to BOTH the "
                        "short and long tables.",
            "yarn": "attention_factor: the given value, else if mscale and mscale_all_dim are both truthy "
                    "get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim), else get_mscale(factor) with "
                    "get_mscale(s, m=1) = 1 if s <= 1 else 0.1 * m * ln(s) + 1 (mscale alone is ignored). "
                    "beta_fast/beta_slow default 32/1; truncate (default true) floors/ceils the correction range; "
                    "note transformers reads truncate from the top-level rope_parameters dict.",
            "partial_rotary": "partial_default uses Phi3RotaryEmbedding (Phi3Config): Llama's default rope ignores "
                              "partial_rotary_factor (its inv_freq has head_dim/2 entries regardless).",
            "config_json": "config.json as save_pretrained writes it (transformers-5 `rope_parameters`; "
                           "transformers_version removed); config_json_old is the same config in the pre-5 layout "
                           "(top-level rope_theta, rope_scaling; Phi-3: top-level partial_rotary_factor and "
                           "original_max_position_embeddings, rope_scaling with \"type\"), checked to load to the "
                           "same rope_parameters and inv_freq.",
            "llama3_bands": "per inv_freq entry: wavelen = 2 pi / inv; 'high' (wavelen < original_max / "
                            "high_freq_factor): unchanged; 'low' (wavelen > original_max / low_freq_factor): "
                            "inv / factor; 'medium': (1 - s) * inv / factor + s * inv with s = (original_max / "
                            "wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)",
            "yarn_correction_range": "[low, high] of transformers' find_correction_range: low/high = dim * "
                                     "ln(original_max / (beta * 2 pi)) / (2 ln theta) for beta_fast / beta_slow, "
                                     "floor/ceil when truncate, clamped to [0, dim - 1]; ramp[i] = clamp((i - low) / "
                                     "(high - low), 0, 1) for i < dim/2 (high += 0.001 if equal); inv = "
                                     "inv_interp * ramp + inv_extrap * (1 - ramp), inv_extrap = 1 / theta^(2i/dim), "
                                     "inv_interp = inv_extrap / factor",
            "gemma3": "gemma3_*: Gemma3RotaryEmbedding of tiny-gemma3's config, one table per layer type "
                      "(forward(x, position_ids, layer_type)).",
        },
        "lengths": ROPE_LENGTHS,
        "cases": cases,
    }
    return meta, tensors


# --------------------------------------------------------------------------
# Tiny models of new families
# --------------------------------------------------------------------------

def _generate(model, tok):
    g = gf._generate(model, tok)
    assert g["min_top2_logit_margin"] >= GEN_MIN_MARGIN, g["min_top2_logit_margin"]
    return g


def _family_checks(name, spec, model, ids, mem_logits, examples_lengths, gen_len):
    """Per-family assertions on the in-memory model; returns what families.json records."""
    state = {k: v for k, v in model.state_dict().items()}
    info = {}
    if name == "tiny-llama3":
        assert len(ids) > LLAMA3_ORIGINAL_MAX, len(ids)
        rp = dict(spec["config"]["rope_parameters"])
        other = _variant_logits(spec, state, ids, rope_parameters={"rope_type": "default",
                                                                  "rope_theta": rp["rope_theta"]})
        diff = (other - mem_logits).abs().max().item()
        assert diff > 1e-3, diff
        info["max_abs_logit_diff_vs_default_rope"] = diff
        info["longest_eval_line_tokens"] = max(examples_lengths)
    elif name == "tiny-gemma3":
        w = spec["config"]["sliding_window"]
        assert len(ids) > w and min(examples_lengths) > w and gen_len > w
        wide = _variant_logits(spec, state, ids, sliding_window=4 * len(ids))
        d1 = (wide - mem_logits).abs().max().item()
        assert d1 > 1e-3, d1
        rp = copy.deepcopy(spec["config"]["rope_parameters"])
        rp["full_attention"] = {"rope_type": "default", "rope_theta": rp["full_attention"]["rope_theta"]}
        d2 = (_variant_logits(spec, state, ids, rope_parameters=rp) - mem_logits).abs().max().item()
        assert d2 > 1e-3, d2
        d3 = (_variant_logits(spec, state, ids, query_pre_attn_scalar=spec["config"]["head_dim"])
              - mem_logits).abs().max().item()
        assert d3 > 1e-3, d3
        info.update(max_abs_logit_diff_vs_no_sliding_window=d1,
                    max_abs_logit_diff_vs_default_rope_on_full_layers=d2,
                    max_abs_logit_diff_vs_query_pre_attn_scalar_eq_head_dim=d3,
                    shortest_text_tokens=min(examples_lengths + [len(ids), gen_len]),
                    sliding_window_mask=_sliding_mask_check(model.config, 10),
                    embed_scale=float(model.model.embed_tokens.embed_scale),
                    attention_scaling=[float(l.self_attn.scaling) for l in model.model.layers])
        assert info["embed_scale"] == 8.0
        assert all(s == 24 ** -0.5 for s in info["attention_scaling"])
    elif name == "tiny-qwen3":
        a = model.model.layers[0].self_attn
        assert a.head_dim == 32 and a.q_proj.weight.shape == (128, 64) and a.q_proj.bias is None
        assert a.q_norm.weight.shape == (32,)
        info["attention_scaling"] = float(a.scaling)
    elif name == "tiny-phi3":
        a = model.model.layers[0].self_attn
        assert a.qkv_proj.weight.shape == (4 * 16 + 2 * 2 * 16, 64)
        assert model.model.layers[0].mlp.gate_up_proj.weight.shape == (2 * 128, 64)
        info["attention_scaling"] = float(a.scaling)
    return info


def _families_fixture():
    import peft
    import safetensors
    import tokenizers
    import transformers
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    # eval.jsonl is gen_fixtures.py's: check it is the same bytes rather than rewriting it
    eval_path = gf.DATA_OUT / "eval.jsonl"
    want = "".join(json.dumps(l, ensure_ascii=False) + "\n" for l in gf.EVAL_LINES).encode("utf-8")
    assert eval_path.read_bytes() == want, f"{eval_path} differs from gen_fixtures.EVAL_LINES"

    base_tok = gf._train_tokenizer()
    ref_tok_dir = MODELS_OUT / "tiny-llama"
    ref = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "tokenizers": tokenizers.__version__,
                     "safetensors": safetensors.__version__},
        "notes": {
            "numbers": "CPU, attn_implementation=eager, base weights loaded with dtype=float32 "
                       "(tiny-qwen3's bf16 weights upcast at load); DoRA adapters loaded with "
                       "PeftModel.from_pretrained on that float32 base. Same definitions as reference.json.",
            "weights": "every parameter from one seeded generator: matrices/embeddings N(0, 0.1); norm weights "
                       "1 + N(0, 0.1), except Gemma3 (RMSNorm computes x * (1 + w)) where w ~ N(0, 0.1). "
                       "models.<M>.weights lists every stored tensor (name, shape, dtype, file).",
            "tokenizer": "all four models use tiny-llama's tokenizer files byte for byte (no BOS added, "
                         "chat_template in tokenizer_config.json); ids are recorded in eval/logits/generate.",
            "logits_bf16": "tiny-qwen3 only: logits with the model loaded with dtype=bfloat16 (its stored dtype), "
                           "adapter weights float32 as PEFT keeps them; bf16 logits stored as float32.",
            "eval_loss": "sum over the file of -log softmax(logits[t-1])[ids[t]] over scored "
                         "targets t, divided by the number of scored targets; log_softmax in float64 "
                         "of float32 logits. eval.<M>.lines[i].targets lists the scored positions t.",
            "merged": "merge_and_unload() of the DoRA adapter on the base in its stored dtype "
                      "(float32 / bfloat16): merged.<M>.model.layers.L.<path>.weight for every adapted module "
                      "(Phi-3: self_attn.qkv_proj, self_attn.o_proj, mlp.gate_up_proj, mlp.down_proj).",
            "train_steps": "train_steps.tiny-gemma3: PEFT's initial DoRA adapter (get_peft_model after "
                           "torch.manual_seed(seed): lora_A kaiming-uniform, lora_B = 0, magnitude = row norms of "
                           "W) saved in init_dir; then `steps` AdamW steps (torch, foreach=False) on the full batch "
                           "of the eval text lines, loss = summed cross entropy / number of targets; losses[k] is "
                           "the loss of the forward before step k; loss_after is one more forward after the last "
                           "step. train_steps.tiny-gemma3.<peft key> in families.safetensors holds the adapter "
                           "after the steps (keys as in adapter_model.safetensors). At step 1 lora_A's gradient is "
                           "zero (lora_B = 0), so lora_A only decays: A *= 1 - lr * weight_decay.",
            "tensors": "families.safetensors",
        },
        "eval_file": "tests/fixtures/data/eval.jsonl",
        "logits_text": gf.LOGITS_TEXT,
        "models": {}, "tokenizer": {}, "eval": {}, "logits": {}, "logits_bf16": {},
        "eval_loss": {}, "generate": {}, "merged": {}, "adapter_training": {}, "checks": {},
        "train_steps": {},
    }
    tensors = {}

    for name, spec in FAMILY_SPECS.items():
        mdir = MODELS_OUT / name
        adir = MODELS_OUT / f"{name}-dora"
        rel = f"tests/fixtures/models/{name}"
        n_layers = spec["config"]["num_hidden_layers"]
        for d in (mdir, adir):
            if d.exists():
                shutil.rmtree(d)
        gf._write_tokenizer(base_tok, mdir, False, False)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            assert (mdir / f).read_bytes() == (ref_tok_dir / f).read_bytes(), f
        tok = AutoTokenizer.from_pretrained(str(mdir))
        assert len(tok) == gf.TOK_VOCAB_SIZE and tok.chat_template == gf.CHAT_TEMPLATE
        assert tok.eos_token_id == 2 and tok.bos_token_id == 0 and tok.pad_token_id == 0

        # ---- model
        model = _build(spec)
        n_norm = _init_weights(model, spec["seed"] + 1, spec["norm_init"])
        model.generation_config.pad_token_id = 0
        model.generation_config.bos_token_id = 0
        model.generation_config.eos_token_id = 2
        model.eval()
        if spec["base_dtype"] == "bfloat16":
            with torch.no_grad():  # parameters only: buffers (inv_freq) stay float32, as a reload makes them
                for p in model.parameters():
                    p.copy_(p.to(bf16).to(f32))
        ids = tok(gf.LOGITS_TEXT, add_special_tokens=True)["input_ids"]
        assert ids == tok(gf.LOGITS_TEXT, add_special_tokens=False)["input_ids"]
        mem_logits = gf._logits(model, ids)
        examples = gf._eval_examples(tok)
        gf._check_masks(tok, examples)
        gen_prompt = tok.apply_chat_template(gf.GEN_MESSAGES, add_generation_prompt=True, tokenize=False)
        gen_len = len(tok(gen_prompt, add_special_tokens=False)["input_ids"])
        checks = _family_checks(name, spec, model, ids, mem_logits, [len(e["ids"]) for e in examples], gen_len)
        checks["norm_weights_perturbed"] = n_norm
        ref["checks"][name] = checks

        if spec["base_dtype"] == "bfloat16":
            model = model.to(bf16)
        model.save_pretrained(str(mdir))
        assert (mdir / "model.safetensors").exists() and not (mdir / "model.safetensors.index.json").exists()
        del model
        cfg_json = json.loads((mdir / "config.json").read_text())
        assert cfg_json["architectures"] == [spec["arch"]]
        assert cfg_json["dtype"] == spec["base_dtype"], cfg_json.get("dtype")
        assert cfg_json["tie_word_embeddings"] is spec["config"]["tie_word_embeddings"]
        assert cfg_json["rope_parameters"] == spec["config"]["rope_parameters"], cfg_json["rope_parameters"]
        assert "rope_theta" not in cfg_json and "rope_scaling" not in cfg_json
        loaded_cfg = AutoConfig.from_pretrained(str(mdir))
        assert loaded_cfg.rope_parameters == spec["config"]["rope_parameters"], loaded_cfg.rope_parameters
        for k, v in spec["config"].items():
            assert getattr(loaded_cfg, k) == v, (k, getattr(loaded_cfg, k), v)

        ref["tokenizer"][name] = {
            "same_as": "tiny-llama", "tokenizer_json_sha256": _sha256(mdir / "tokenizer.json"),
            "vocab_size": len(tok), "special_tokens": {s: tok.convert_tokens_to_ids(s) for s in gf.TOK_SPECIAL},
            "post_processor_adds_bos": False, "chat_template_in": "tokenizer_config.json"}
        ref["eval"][name] = {"lines": examples}

        # ---- base model numbers (reloaded from disk, float32)
        base = AutoModelForCausalLM.from_pretrained(str(mdir), dtype=f32, **LOAD).eval()
        assert type(base).__name__ == spec["arch"]
        if spec["config"]["tie_word_embeddings"]:
            assert base.lm_head.weight.data_ptr() == base.model.embed_tokens.weight.data_ptr()
        else:
            assert base.lm_head.weight.data_ptr() != base.model.embed_tokens.weight.data_ptr()
        logits = gf._logits(base, ids)
        assert torch.equal(logits, mem_logits), "reloaded base logits differ from the saved model"
        tensors[f"logits.{name}.none"] = logits.contiguous()
        ref["logits"][name] = {"ids": ids, "shape": list(logits.shape), "none": f"logits.{name}.none"}
        ref["eval_loss"][name] = {"none": gf._eval_loss(base, examples)}
        ref["generate"][name] = {"none": _generate(base, tok)}
        del base

        # ---- adapter, trained on the base as stored (bf16 for tiny-qwen3)
        sdt = getattr(torch, spec["base_dtype"])
        stored = AutoModelForCausalLM.from_pretrained(str(mdir), dtype=sdt, **LOAD)
        pm_train, losses = _train_adapter(stored, tok, spec["seed"] + 2, spec["targets"],
                                          gf.ADAPTER_TRAIN["steps"], adir, rel)
        train_logits = gf._logits(pm_train, ids)
        with safe_open(str(adir / "adapter_model.safetensors"), "pt") as f:
            akeys = sorted(f.keys())
            adtypes = sorted({str(f.get_tensor(k).dtype).replace("torch.", "") for k in akeys})
            bmax = max(f.get_tensor(k).abs().max().item() for k in akeys if "lora_B" in k)
        assert len(akeys) == 3 * len(spec["targets"]) * n_layers, akeys
        assert bmax > 0, "lora_B stayed zero"
        ref["adapter_training"][name] = {
            **{k: list(v) if isinstance(v, tuple) else v for k, v in gf.ADAPTER_TRAIN.items()},
            "data": "the text lines of eval.jsonl, ids with add_special_tokens=True, every token a target, "
                    "loss = summed cross entropy / number of targets, one full batch per step",
            "target_modules": spec["targets"], "r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "use_dora": True,
            "base_dtype_during_training": spec["base_dtype"], "seed": spec["seed"] + 2,
            "losses": losses, "saved_dtypes": adtypes, "max_abs_lora_B": bmax, "keys": akeys}
        del pm_train, stored

        # ---- adapter numbers (float32 base)
        base = AutoModelForCausalLM.from_pretrained(str(mdir), dtype=f32, **LOAD)
        pm = PeftModel.from_pretrained(base, str(adir)).eval()
        logits = gf._logits(pm, ids)
        if spec["base_dtype"] == "float32":
            assert torch.equal(logits, train_logits), "reloaded adapter logits differ"
        assert not torch.allclose(logits, tensors[f"logits.{name}.none"], atol=1e-3), "adapter has no effect"
        tensors[f"logits.{name}.dora"] = logits.contiguous()
        ref["logits"][name]["dora"] = f"logits.{name}.dora"
        ref["eval_loss"][name]["dora"] = gf._eval_loss(pm, examples)
        ref["generate"][name]["dora"] = _generate(pm, tok)
        del pm, base

        # ---- stored-dtype base: bf16 logits and the merge in the stored dtype
        if sdt != f32:
            b16 = AutoModelForCausalLM.from_pretrained(str(mdir), dtype=bf16, **LOAD).eval()
            default = AutoModelForCausalLM.from_pretrained(str(mdir), **LOAD)
            ref["models"].setdefault(name, {})["default_load_dtype"] = str(default.dtype).replace("torch.", "")
            del default
            tensors[f"logits_bf16.{name}.none"] = gf._logits(b16, ids).contiguous()
            pm16 = PeftModel.from_pretrained(b16, str(adir)).eval()
            l16 = gf._logits(pm16, ids)
            assert torch.equal(l16, train_logits), "reloaded adapter (bf16 base) logits differ from training"
            tensors[f"logits_bf16.{name}.dora"] = l16.contiguous()
            ref["logits_bf16"][name] = {"none": f"logits_bf16.{name}.none", "dora": f"logits_bf16.{name}.dora",
                                        "max_abs_diff_vs_f32": {
                                            s: (tensors[f"logits_bf16.{name}.{s}"]
                                                - tensors[f"logits.{name}.{s}"]).abs().max().item()
                                            for s in ("none", "dora")}}
            del pm16, b16
        sbase = AutoModelForCausalLM.from_pretrained(str(mdir), dtype=sdt, **LOAD)
        merged_model = PeftModel.from_pretrained(sbase, str(adir)).merge_and_unload().eval()
        merged = {"params": []}
        for l in range(n_layers):
            for p in spec["proj_paths"]:
                for k, v in merged_model.model.layers[l].get_submodule(p).state_dict().items():
                    assert v.dtype == sdt, (p, k, v.dtype)
                    key = f"model.layers.{l}.{p}.{k}"
                    tensors[f"merged.{name}.{key}"] = v.detach().contiguous().clone()
                    merged["params"].append(key)
        assert len(merged["params"]) == len(spec["targets"]) * n_layers
        ml = gf._logits(merged_model, ids)
        merged["dtype"] = spec["base_dtype"]
        merged["max_abs_logit_diff_vs_dora"] = (ml - tensors[f"logits.{name}.dora"]).abs().max().item()
        if sdt == f32:
            assert merged["max_abs_logit_diff_vs_dora"] < 1e-4, merged
        ref["merged"][name] = merged
        del merged_model, sbase

        # ---- recorded training steps from PEFT's initial adapter
        if name == TRAIN_STEPS_MODEL:
            init_dir = MODELS_OUT / f"{name}-dora-init"
            steps_dir = pathlib.Path(tempfile.mkdtemp())
            try:
                base = AutoModelForCausalLM.from_pretrained(str(mdir), dtype=f32, **LOAD)
                pm_s, s_losses = _train_adapter(base, tok, spec["seed"] + 2, spec["targets"], TRAIN_STEPS,
                                                steps_dir / "a", rel, init_dir=init_dir)
                assert s_losses == losses[:TRAIN_STEPS], (s_losses, losses)
                pm_s.train()
                with torch.no_grad():
                    loss_after = _train_loss(pm_s, _train_seqs(tok)).item()
                after = {k: v.detach().contiguous().clone() for k, v in get_peft_model_state_dict(pm_s).items()}
                assert sorted(after) == akeys
                saved_after = load_file(str(steps_dir / "a" / "adapter_model.safetensors"))
                assert sorted(saved_after) == akeys and all(torch.equal(saved_after[k], after[k]) for k in akeys)
                del pm_s, base
            finally:
                shutil.rmtree(steps_dir)
            init = load_file(str(init_dir / "adapter_model.safetensors"))
            assert sorted(init) == akeys
            assert all(init[k].abs().max().item() == 0 for k in akeys if "lora_B" in k)
            # the saved init reproduces the in-memory one: reload it and check the magnitude = ||W|| rows
            base = AutoModelForCausalLM.from_pretrained(str(mdir), dtype=f32, **LOAD)
            pm_i = PeftModel.from_pretrained(base, str(init_dir)).eval()
            init_logits = gf._logits(pm_i, ids)
            assert (init_logits - tensors[f"logits.{name}.none"]).abs().max().item() < 1e-4
            for l in range(n_layers):
                for p in spec["proj_paths"]:
                    lay = pm_i.base_model.model.model.layers[l].get_submodule(p)
                    w = lay.get_base_layer().weight
                    m = lay.lora_magnitude_vector["default"].weight
                    assert (m - torch.linalg.norm(w, dim=1)).abs().max().item() < 1e-6, (l, p)
            del pm_i, base
            for k in akeys:
                tensors[f"train_steps.{name}.{k}"] = after[k]
            ref["train_steps"][name] = {
                "init_dir": f"tests/fixtures/models/{name}-dora-init", "base_dir": rel,
                "steps": TRAIN_STEPS, "seed": spec["seed"] + 2,
                "optimizer": {"type": "torch.optim.AdamW", "lr": gf.ADAPTER_TRAIN["lr"],
                              "betas": list(gf.ADAPTER_TRAIN["betas"]), "eps": gf.ADAPTER_TRAIN["eps"],
                              "weight_decay": gf.ADAPTER_TRAIN["weight_decay"], "foreach": False,
                              "amsgrad": False, "maximize": False},
                "adapter": {"r": 4, "lora_alpha": 8, "scaling": 2.0, "lora_dropout": 0.0, "use_dora": True,
                            "use_rslora": False, "target_modules": spec["targets"],
                            "init": "PEFT default: lora_A kaiming_uniform_(a=sqrt(5)) after torch.manual_seed(seed), "
                                    "lora_B zeros, magnitude = ||W||_row (saved: load it, don't re-create it)"},
                "data": {"sequences": _train_seqs(tok),
                         "loss": "sum over sequences of cross_entropy(logits[:-1], ids[1:], reduction=sum) / "
                                 "total number of targets; one full batch per step, no shuffling, no clipping, "
                                 "no scheduler"},
                "train_mode": "pm.train() (dropout 0, so identical to eval)",
                "losses": s_losses, "loss_after": loss_after,
                "init_logits_max_abs_diff_vs_base": (init_logits - tensors[f"logits.{name}.none"]).abs().max().item(),
                "prefix": f"train_steps.{name}.", "keys": akeys,
                "matches_first_steps_of": f"adapter_training.{name}.losses[:{TRAIN_STEPS}]"}

        ref["models"].setdefault(name, {}).update({
            "dir": rel, "adapter_dir": f"tests/fixtures/models/{name}-dora",
            "architecture": spec["arch"], "model_type": cfg_json["model_type"],
            "stored_dtype": spec["base_dtype"], "reference_dtype": "float32", "config": cfg_json,
            "files": sorted(p.name for p in mdir.iterdir()),
            "adapter_config": json.loads((adir / "adapter_config.json").read_text()),
            "rope_parameters_loaded": loaded_cfg.rope_parameters,
            "weights": _weights_listing(mdir),
            "norm_init": spec["norm_init"], "seed": spec["seed"],
        })
        print(f"wrote {mdir} and {adir}: eval loss none={ref['eval_loss'][name]['none']['loss']:.4f} "
              f"dora={ref['eval_loss'][name]['dora']['loss']:.4f}; adapter dtypes {adtypes}; "
              f"train losses {losses[0]:.4f} -> {losses[-1]:.4f}")

    save_file(tensors, str(MODELS_OUT / "families.safetensors"))
    (MODELS_OUT / "families.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n",
                                              encoding="utf-8")
    print(f"wrote {MODELS_OUT / 'families.json'} and families.safetensors ({len(tensors)} tensors)")


def main():
    import warnings

    from safetensors.torch import save_file

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    meta, tensors = rope_fixture()
    ROPE_OUT.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(ROPE_OUT / "rope.safetensors"))
    (ROPE_OUT / "rope.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {ROPE_OUT / 'rope.json'} and rope.safetensors ({len(tensors)} tensors)")

    with warnings.catch_warnings():
        # PEFT calls a transformers method that transformers 5 deprecates
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        _families_fixture()


if __name__ == "__main__":
    gf.run_with_pinned_hash_seed(main)
