#!/usr/bin/env python3
"""Writes the multimodal Gemma 3 fixtures: a tiny Gemma3ForConditionalGeneration
(model_type "gemma3") whose language model is the committed tiny-gemma3's, a
tiny SigLIP vision tower, and PEFT adapters on it.

    pip install torch "transformers>=5" peft safetensors tokenizers
    python3 tools/gen_gemma3_mm_fixture.py
    python3 tools/gen_gemma3_mm_fixture.py --check-adapter DIR   # an adapter our trainer wrote
    python3 tools/gen_gemma3_mm_fixture.py --check-merged DIR    # a directory our merge wrote

  models/tiny-gemma3-mm/          save_pretrained of the model in bfloat16 (the
                                  hub layout transformers writes: language_model.model.*,
                                  vision_tower.*, multi_modal_projector.*), text weights
                                  = tiny-gemma3's rounded to bf16, tokenizer = tiny-gemma3's
  models/tiny-gemma3-mm-dora/     PEFT DoRA trained ADAPTER_TRAIN steps with
                                  target_modules a regex over the language model only
  models/tiny-gemma3-mm-vision-dora/
                                  PEFT's initial DoRA adapter for target_modules ["q_proj"]:
                                  it wraps SigLIP's q_proj too (the refusal test's input)
  models/gemma3_mm.{json,safetensors}
                                  families.json's layout for "tiny-gemma3-mm": logits,
                                  eval loss, greedy generation with and without the adapter,
                                  merge_and_unload() of three projections; plus the key names
                                  of save_original_format=False (model.language_model.*), and
                                  what transformers makes of a sparse 4B-style config.json

CPU, one thread, eager attention, fixed seeds, PYTHONHASHSEED=0 re-exec (as
gen_family_fixtures.py, whose helpers it imports).
"""
import copy
import json
import pathlib
import shutil
import sys
import tempfile
import warnings

import torch

TOOLS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
import gen_family_fixtures as fam  # noqa: E402
import gen_fixtures as gf  # noqa: E402

NAME = "tiny-gemma3-mm"
TEXT_FROM = "tiny-gemma3"
OUT = gf.MODELS_OUT
SEED = 12000
# the adapter's seed (SEED + 2 left a greedy step within fam.GEN_MIN_MARGIN of a tie)
ADAPTER_SEED = SEED + 4
f32, bf16 = torch.float32, torch.bfloat16
# A SigLIP small enough to commit: 28x28 images in 14x14 patches (4 patches,
# pooled to 1 token per image), no pooling head (as Gemma 3's own).
VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
              image_size=28, patch_size=14, num_channels=3, vision_use_head=False)
MM_TOKENS_PER_IMAGE = 1
# What our trainer writes for this model: the language model's projections only, so
# that PEFT does not also wrap SigLIP's q_proj/k_proj/v_proj.
TARGET_REGEX = (r"model\.language_model\.layers\.\d+\.(?:self_attn|mlp)\."
                r"(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")
# merge_and_unload()'s weights recorded: an attention and an MLP projection or two of
# the full-attention layer (all 21 would double the fixture)
MERGED_LAYER = 2
MERGED_PATHS = ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"]
# google/gemma-3-4b-it's text_config as the hub's config.json states it: the rest
# comes from Gemma3TextConfig's defaults
SPARSE_TEXT_CONFIG = {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                      "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                      "sliding_window": 1024}


def _quiet():
    import transformers

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


def _load(mdir, dtype=f32):
    from transformers import Gemma3ForConditionalGeneration

    m = Gemma3ForConditionalGeneration.from_pretrained(str(mdir), dtype=dtype, **fam.LOAD)
    assert type(m).__name__ == "Gemma3ForConditionalGeneration"
    return m.eval()


def _build():
    """The model: tiny-gemma3's config and weights as the language model, a seeded vision tower."""
    from safetensors.torch import load_file
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    text = json.loads((OUT / TEXT_FROM / "config.json").read_text())
    for k in ("architectures", "dtype", "transformers_version", "_sliding_window_pattern"):
        text.pop(k, None)
    config = Gemma3Config(text_config=text, vision_config=dict(model_type="siglip_vision_model", **VISION),
                          mm_tokens_per_image=MM_TOKENS_PER_IMAGE)
    torch.manual_seed(SEED)
    model = Gemma3ForConditionalGeneration(config).to(f32)
    model.set_attn_implementation(fam.LOAD["attn_implementation"])
    text_state = load_file(str(OUT / TEXT_FROM / "model.safetensors"))
    g = torch.Generator().manual_seed(SEED)
    n_text = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("model.language_model."):
                p.copy_(text_state["model." + name[len("model.language_model."):]])
                n_text += 1
            elif name == "lm_head.weight":
                assert p.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
            else:
                # SigLIP's LayerNorms scale by w (1 + N), Gemma's projector RMSNorm by 1 + w (N)
                v = torch.randn(p.shape, generator=g) * gf.INIT_STD
                if "layer_norm" in name or "layernorm" in name:
                    v = v + (1.0 if name.endswith("weight") else 0.0)
                p.copy_(v)
            p.copy_(p.to(bf16))  # the values the bf16 checkpoint stores
    assert n_text == len(text_state), (n_text, len(text_state))
    return model


def _vision_modules(pm):
    """Modules PEFT wrapped outside the language model."""
    from peft.tuners.lora import LoraLayer

    return [n for n, m in pm.named_modules() if isinstance(m, LoraLayer) and ".language_model." not in n]


def _key_layouts(model, mdir):
    """Stored key names: the default save (hub layout) and save_original_format=False."""
    from safetensors import safe_open

    with tempfile.TemporaryDirectory() as tmp:
        copy.deepcopy(model).to(bf16).save_pretrained(tmp, save_original_format=False)
        with safe_open(str(pathlib.Path(tmp) / "model.safetensors"), "pt") as f:
            new = {k: f.get_tensor(k) for k in f.keys()}
        reloaded = _load(tmp)
    with safe_open(str(mdir / "model.safetensors"), "pt") as f:
        old = {k: f.get_tensor(k) for k in f.keys()}
    # every tensor under both names, same values: pair them by the rename rule and check it
    def to_new(k):
        for a, b in (("language_model.model.", "model.language_model."),
                     ("language_model.lm_head.", "lm_head."),
                     ("vision_tower.", "model.vision_tower."),
                     ("multi_modal_projector.", "model.multi_modal_projector.")):
            if k.startswith(a):
                return b + k[len(a):]
        raise AssertionError(k)
    pairs = {k: to_new(k) for k in sorted(old)}
    assert sorted(pairs.values()) == sorted(new), (sorted(pairs.values()), sorted(new))
    assert all(torch.equal(old[k], new[v]) for k, v in pairs.items())
    return pairs, reloaded


def _sparse_config():
    """What transformers' Gemma3Config makes of the 4B's sparse text_config."""
    from transformers import AutoConfig

    cfg_json = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
                "eos_token_id": [1, 106], "text_config": SPARSE_TEXT_CONFIG,
                "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152,
                                  "image_size": 896, "intermediate_size": 4304, "num_attention_heads": 16,
                                  "num_hidden_layers": 27, "patch_size": 14, "vision_use_head": False}}
    with tempfile.TemporaryDirectory() as tmp:
        (pathlib.Path(tmp) / "config.json").write_text(json.dumps(cfg_json))
        c = AutoConfig.from_pretrained(tmp)
    t = c.text_config
    assert type(c).__name__ == "Gemma3Config" and type(t).__name__ == "Gemma3TextConfig"
    rp = t.rope_parameters
    return {"config_json": cfg_json, "text_config": {
        "vocab_size": t.vocab_size, "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_hidden_layers, "num_attention_heads": t.num_attention_heads,
        "num_key_value_heads": t.num_key_value_heads, "head_dim": t.head_dim,
        "rms_norm_eps": t.rms_norm_eps, "max_position_embeddings": t.max_position_embeddings,
        "query_pre_attn_scalar": t.query_pre_attn_scalar, "sliding_window": t.sliding_window,
        "layer_types": t.layer_types, "hidden_activation": t.hidden_activation,
        "tie_word_embeddings": c.tie_word_embeddings, "text_tie_word_embeddings": t.tie_word_embeddings,
        "final_logit_softcapping": t.final_logit_softcapping, "eos_token_id": t.eos_token_id,
        "rope_parameters": rp}}


def main():
    import peft
    import transformers
    from peft import PeftModel, get_peft_model
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    _quiet()
    mdir, adir, vdir = OUT / NAME, OUT / f"{NAME}-dora", OUT / f"{NAME}-vision-dora"
    rel = f"tests/fixtures/models/{NAME}"
    if mdir.exists():
        shutil.rmtree(mdir)
    # float32 in memory (a bf16 round trip would also round RoPE's inv_freq buffers)
    model = _build()
    copy.deepcopy(model).to(bf16).save_pretrained(str(mdir))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(OUT / TEXT_FROM / f, mdir / f)
    pairs, new_layout = _key_layouts(model, mdir)
    mem = model.eval()

    tok = AutoTokenizer.from_pretrained(str(mdir))
    ids = tok(gf.LOGITS_TEXT, add_special_tokens=True)["input_ids"]
    examples = gf._eval_examples(tok)
    gf._check_masks(tok, examples)
    ref = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "peft": peft.__version__},
           "notes": {"numbers": "families.json's definitions; base loaded with dtype=float32 (its bf16 "
                                "weights upcast), attn_implementation=eager, text-only inputs",
                     "merged": f"merge_and_unload() on the bf16 base: {', '.join(MERGED_PATHS)} of layer "
                               f"{MERGED_LAYER} (merged.<M>.params), under their in-memory names",
                     "key_layouts": "stored tensor name (default save_pretrained, hub layout) -> name "
                                    "with save_original_format=False; transformers loads both to "
                                    "identical logits"},
           "eval_file": "tests/fixtures/data/eval.jsonl", "logits_text": gf.LOGITS_TEXT,
           "eval": {NAME: {"lines": examples}}, "logits": {}, "eval_loss": {}, "generate": {},
           "merged": {}}
    tensors = {}

    base = _load(mdir)
    assert base.lm_head.weight.data_ptr() == base.model.language_model.embed_tokens.weight.data_ptr()
    logits = gf._logits(base, ids)
    assert torch.equal(logits, gf._logits(mem, ids)), "reloaded logits differ from the saved model"
    assert torch.equal(logits, gf._logits(new_layout, ids)), "the model.language_model.* layout differs"
    tensors[f"logits.{NAME}.none"] = logits.contiguous()
    ref["logits"][NAME] = {"ids": ids, "shape": list(logits.shape), "none": f"logits.{NAME}.none",
                           "dora": f"logits.{NAME}.dora"}
    ref["eval_loss"][NAME] = {"none": gf._eval_loss(base, examples)}
    ref["generate"][NAME] = {"none": fam._generate(base, tok)}
    del base, mem, new_layout

    # ---- the adapter: the regex keeps SigLIP out; a list of names would not
    base = _load(mdir)
    pm, losses = fam._train_adapter(base, tok, ADAPTER_SEED, TARGET_REGEX, gf.ADAPTER_TRAIN["steps"], adir, rel)
    assert not _vision_modules(pm)
    with safe_open(str(adir / "adapter_model.safetensors"), "pt") as f:
        akeys = sorted(f.keys())
        bmax = max(f.get_tensor(k).abs().max().item() for k in akeys if "lora_B" in k)
    assert len(akeys) == 3 * 7 * 3 and bmax > 0, (akeys, bmax)
    assert all(k.startswith("base_model.model.model.language_model.layers.") for k in akeys)
    del pm, base
    base = _load(mdir)
    torch.manual_seed(SEED + 3)
    vpm = get_peft_model(base, fam._lora_config(["q_proj"]))
    vision = _vision_modules(vpm)
    assert vision == ["base_model.model.model.vision_tower.encoder.layers.0.self_attn.q_proj"], vision
    fam._save_adapter(vpm, vdir, rel)
    del vpm, base

    base = _load(mdir)
    pm = PeftModel.from_pretrained(base, str(adir)).eval()
    assert not _vision_modules(pm)
    logits = gf._logits(pm, ids)
    assert not torch.allclose(logits, tensors[f"logits.{NAME}.none"], atol=1e-3), "adapter has no effect"
    tensors[f"logits.{NAME}.dora"] = logits.contiguous()
    ref["eval_loss"][NAME]["dora"] = gf._eval_loss(pm, examples)
    ref["generate"][NAME]["dora"] = fam._generate(pm, tok)
    del pm, base

    sbase = _load(mdir, bf16)
    merged_model = PeftModel.from_pretrained(sbase, str(adir)).merge_and_unload().eval()
    merged = {"dtype": "bfloat16", "layers": [MERGED_LAYER], "params": []}
    layer = merged_model.model.language_model.layers[MERGED_LAYER]
    for p in MERGED_PATHS:
        v = layer.get_submodule(p).weight
        assert v.dtype == bf16
        key = f"model.language_model.layers.{MERGED_LAYER}.{p}.weight"
        tensors[f"merged.{NAME}.{key}"] = v.detach().contiguous().clone()
        merged["params"].append(key)
    ref["merged"][NAME] = merged
    del merged_model, sbase

    with safe_open(str(mdir / "model.safetensors"), "pt") as f:
        stored = {k: [str(f.get_slice(k).get_dtype()), list(f.get_slice(k).get_shape())] for k in f.keys()}
    ref["models"] = {NAME: {
        "dir": rel, "adapter_dir": f"{rel}-dora", "vision_adapter_dir": f"{rel}-vision-dora",
        "architecture": "Gemma3ForConditionalGeneration", "text_weights_from": TEXT_FROM,
        "stored_dtype": "bfloat16", "files": sorted(p.name for p in mdir.iterdir()),
        "config": json.loads((mdir / "config.json").read_text()), "weights": stored,
        "key_layouts": pairs, "target_modules": TARGET_REGEX, "adapter_keys": akeys,
        "vision_adapter_modules": [v[len("base_model.model."):] for v in vision],
        "adapter_training": {"losses": losses, "max_abs_lora_B": bmax, "seed": ADAPTER_SEED,
                             **{k: list(v) if isinstance(v, tuple) else v
                                for k, v in gf.ADAPTER_TRAIN.items()}}}}
    ref["sparse_config"] = _sparse_config()
    save_file(tensors, str(OUT / "gemma3_mm.safetensors"))
    (OUT / "gemma3_mm.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {mdir}, {adir}, {vdir}, gemma3_mm.json: eval loss "
          f"none={ref['eval_loss'][NAME]['none']['loss']:.6f} dora={ref['eval_loss'][NAME]['dora']['loss']:.6f}; "
          f"train losses {losses[0]:.4f} -> {losses[-1]:.4f}")


def check_adapter(adir):
    """An adapter written by our trainer for tiny-gemma3-mm: PEFT loads it onto the
    language model only, and its logits are printed beside the base's."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    _quiet()
    mdir = OUT / NAME
    cfg = json.loads((pathlib.Path(adir) / "adapter_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(mdir))
    ids = tok(gf.LOGITS_TEXT, add_special_tokens=True)["input_ids"]
    base_logits = gf._logits(_load(mdir), ids)
    pm = PeftModel.from_pretrained(_load(mdir), str(adir)).eval()
    wrapped = [n for n, m in pm.named_modules() if hasattr(m, "lora_A")]
    vision = _vision_modules(pm)
    logits = gf._logits(pm, ids)
    print(json.dumps({"target_modules": cfg["target_modules"], "wrapped": len(wrapped),
                      "vision_wrapped": vision,
                      "max_abs_logit_change": (logits - base_logits).abs().max().item()}, indent=1))
    assert not vision and wrapped


def check_merged(out):
    """A directory our merge wrote: transformers loads it as Gemma3ForConditionalGeneration;
    its logits are compared with PEFT's on the committed adapter."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    _quiet()
    mdir = OUT / NAME
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok(gf.LOGITS_TEXT, add_special_tokens=True)["input_ids"]
    m = AutoModelForImageTextToText.from_pretrained(str(out), dtype=f32, **fam.LOAD).eval()
    assert type(m).__name__ == "Gemma3ForConditionalGeneration", type(m)
    peft_logits = gf._logits(PeftModel.from_pretrained(_load(mdir), str(OUT / f"{NAME}-dora")).eval(), ids)
    peft_merged = gf._logits(PeftModel.from_pretrained(_load(mdir, bf16), str(OUT / f"{NAME}-dora"))
                             .merge_and_unload().to(f32).eval(), ids)
    ours = gf._logits(m, ids)
    print(json.dumps({"class": type(m).__name__,
                      "max_abs_logit_diff_vs_peft_adapter": (ours - peft_logits).abs().max().item(),
                      "max_abs_logit_diff_vs_peft_bf16_merge": (ours - peft_merged).abs().max().item(),
                      "max_abs_logit": peft_logits.abs().max().item()}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check-adapter":
        check_adapter(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "--check-merged":
        check_merged(sys.argv[2])
    else:
        gf.run_with_pinned_hash_seed(main)
