#!/usr/bin/env python3
"""Writes tests/fixtures/models/softcap.{json,safetensors}: the committed
tiny-gemma3 (tools/gen_family_fixtures.py) with config.json's
`final_logit_softcapping` set, so that logits become c * tanh(logits / c).

    pip install torch "transformers>=5" peft safetensors tokenizers
    python3 tools/gen_softcap_fixture.py

It reads the committed model, DoRA adapter and initial adapter rather than
re-creating them (PEFT training is not bit-reproducible across CPUs, and the
other family fixtures must not move), and records for the capped model:
  - logits of logits_text with and without tiny-gemma3-dora;
  - eval losses over tests/fixtures/data/eval.jsonl, same definition as
    families.json's eval_loss;
  - TRAIN_STEPS AdamW steps from tiny-gemma3-dora-init, as families.json's
    train_steps (data, loss, optimizer), starting from the saved init:
    the losses, the loss after, and the adapter after the steps.
CPU, float32, one thread, eager attention.
"""
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

NAME = "tiny-gemma3"
# Gemma 2 sets 30.0; tiny-gemma3's logits reach about ±3, so 2.0 bends many of them.
SOFTCAP = 2.0
OUT = gf.MODELS_OUT


def _capped_copy(mdir, vdir):
    for f in mdir.iterdir():
        shutil.copyfile(f, vdir / f.name)
    cfg = json.loads((vdir / "config.json").read_text())
    assert cfg["final_logit_softcapping"] is None
    cfg["final_logit_softcapping"] = SOFTCAP
    (vdir / "config.json").write_text(json.dumps(cfg, indent=2))


def _train_from(pm, seqs, steps):
    """families.json's train_steps loop (full batch, AdamW foreach=False), from a loaded adapter."""
    params = [p for p in pm.parameters() if p.requires_grad]
    a = gf.ADAPTER_TRAIN
    opt = torch.optim.AdamW(params, lr=a["lr"], betas=a["betas"], eps=a["eps"],
                            weight_decay=a["weight_decay"], foreach=False)
    pm.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = fam._train_loss(pm, seqs)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        after = fam._train_loss(pm, seqs).item()
    return losses, after


def main():
    import peft
    import transformers
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")

    mdir, adir, init_dir = (OUT / NAME, OUT / f"{NAME}-dora", OUT / f"{NAME}-dora-init")
    tok = AutoTokenizer.from_pretrained(str(mdir))
    ids = tok(gf.LOGITS_TEXT, add_special_tokens=True)["input_ids"]
    examples = gf._eval_examples(tok)
    seqs = fam._train_seqs(tok)
    load = dict(dtype=torch.float32, **fam.LOAD)
    uncapped = gf._logits(AutoModelForCausalLM.from_pretrained(str(mdir), **load).eval(), ids)

    ref = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "peft": peft.__version__},
           "model": NAME, "base_dir": f"tests/fixtures/models/{NAME}",
           "adapter_dir": f"tests/fixtures/models/{NAME}-dora",
           "init_dir": f"tests/fixtures/models/{NAME}-dora-init",
           "final_logit_softcapping": SOFTCAP,
           "config_change": "config.json's final_logit_softcapping null -> final_logit_softcapping",
           "max_abs_uncapped_logit": uncapped.abs().max().item(),
           "logits": {"ids": ids, "none": "logits.none", "dora": "logits.dora"},
           "eval_loss": {}}
    tensors = {}
    vdir = pathlib.Path(tempfile.mkdtemp())
    try:
        _capped_copy(mdir, vdir)
        base = AutoModelForCausalLM.from_pretrained(str(vdir), **load).eval()
        assert base.config.final_logit_softcapping == SOFTCAP
        logits = gf._logits(base, ids)
        # the cap bites, and is c * tanh(x / c) of the uncapped logits
        assert uncapped.abs().max().item() > SOFTCAP > logits.abs().max().item()
        assert (logits - SOFTCAP * torch.tanh(uncapped / SOFTCAP)).abs().max().item() < 1e-5
        tensors["logits.none"] = logits.contiguous()
        ref["eval_loss"]["none"] = gf._eval_loss(base, examples)
        pm = PeftModel.from_pretrained(base, str(adir)).eval()
        tensors["logits.dora"] = gf._logits(pm, ids).contiguous()
        ref["eval_loss"]["dora"] = gf._eval_loss(pm, examples)
        del pm, base

        base = AutoModelForCausalLM.from_pretrained(str(vdir), **load)
        pm = PeftModel.from_pretrained(base, str(init_dir), is_trainable=True)
        init = load_file(str(init_dir / "adapter_model.safetensors"))
        losses, loss_after = _train_from(pm, seqs, fam.TRAIN_STEPS)
        after = get_peft_model_state_dict(pm)
        assert sorted(after) == sorted(init)
        assert all(not torch.equal(after[k], init[k]) for k in init if "lora_B" in k)
        for k in sorted(after):
            tensors[f"steps.{k}"] = after[k].detach().contiguous().clone()
    finally:
        shutil.rmtree(vdir)
    ref["train_steps"] = {
        "steps": fam.TRAIN_STEPS, "losses": losses, "loss_after": loss_after,
        "prefix": "steps.", "keys": sorted(after),
        "data": "families.json train_steps.tiny-gemma3.data (the text lines of eval.jsonl, full batch)",
        "optimizer": "families.json train_steps.tiny-gemma3.optimizer",
        "start": "the adapter in init_dir, loaded with is_trainable=True"}
    save_file(tensors, str(OUT / "softcap.safetensors"))
    (OUT / "softcap.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"wrote {OUT / 'softcap.json'}: eval loss none={ref['eval_loss']['none']['loss']:.6f} "
          f"dora={ref['eval_loss']['dora']['loss']:.6f}; steps {losses} -> {loss_after:.6f}; "
          f"max |uncapped logit| {ref['max_abs_uncapped_logit']:.3f}")


if __name__ == "__main__":
    gf.run_with_pinned_hash_seed(main)
