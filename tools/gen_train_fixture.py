#!/usr/bin/env python3
"""Writes a step-by-step PEFT training reference for the Rust trainer.

    pip install torch "transformers>=5" peft safetensors && python3 tools/gen_train_fixture.py

It fine-tunes the committed tiny model (tests/fixtures/models/tiny-llama) with
PEFT DoRA and with PEFT LoRA for a few optimizer steps and records, per step,
the loss, the pre-clip gradient norm and the learning rate, so that a Rust test
can check that our trainer reproduces PEFT's losses step by step. The same run
must be reproducible by the Rust trainer configured as recorded in
expected.json: no shuffling (sequential, endless stream of examples), batch
size 2, gradient accumulation 2, max_seq_len 64, right padding with id 0,
AdamW (torch semantics), cosine schedule with 2 warmup steps over 6 steps,
gradient clipping by total norm, adapters initialised from init-*/.

Outputs, under tests/fixtures/train_parity/:

  data/train.jsonl, data/valid.jsonl
                       original lines written for this project (no outside
                       source), dedicated to the public domain; the three
                       formats mixed (text, prompt/completion, messages)
  init-dora/, init-lora/
                       PEFT adapters (save_pretrained: adapter_model.safetensors +
                       adapter_config.json) for tiny-llama: r 4, alpha 8, dropout 0,
                       all seven projections; lora_A as PEFT initialises it
                       (kaiming-uniform from torch.manual_seed), lora_B ~ N(0, 0.05²)
                       from a seeded generator (so lora_A gets gradients at step 1),
                       DoRA magnitude as PEFT computed it at creation (= ‖W‖ row norms,
                       computed while lora_B was still 0). Both share lora_A and lora_B.
  final-dora/, final-lora/
                       the same adapters after the 6 optimizer steps
  expected.json        versions, hyper-parameters, the exact micro-batches
                       (input_ids, labels; the attention mask is labels' shape
                       with 1 on real tokens = the first `lengths[b]` positions),
                       and per method the step losses, pre-clip grad norms and lrs

Everything runs on the CPU in float32 (eager attention, one thread, fixed
seeds); the script re-runs itself with PYTHONHASHSEED=0 (PEFT writes
target_modules from a set), so running it twice gives byte-identical files.

The data pipeline (the Rust trainer's spec, src/text/data.rs for the tokenization):
  text               ids = encode(text, add_special_tokens=True); scored[t] = t > 0
  prompt/completion  ids = encode(prompt, True) + encode(completion, False);
                     scored[t] = t >= len(prompt ids) and t > 0
  messages           ids = encode(apply_chat_template(messages), False); assistant
                     turn i scored from len(encode(template(messages[:i],
                     add_generation_prompt=True))) (0 if i == 0) to
                     len(encode(template(messages[:i+1]))), never position 0
  labels[t] = ids[t] if scored[t] else -100 (the model shifts: position t is
  predicted from t - 1). Examples with no scored token are dropped; the rest are
  truncated to their first max_seq_len tokens. Micro-batch j takes the next
  batch_size indices of the endless stream 0, 1, ..., N-1, 0, 1, ...; it is padded
  on the right to its longest example with id 0 (labels -100, attention 0).
  Micro-batch loss = transformers' causal-LM loss = mean cross entropy over all
  non-ignored targets of the micro-batch. A step: for each of grad_accum
  micro-batches (loss_k / grad_accum).backward(); step loss = mean of the loss_k;
  total_norm = clip_grad_norm_(trainable, grad_clip) (recorded before clipping);
  optimizer.step(); scheduler.step(); zero_grad().
"""
import json
import math
import os
import pathlib
import shutil
import sys
import tempfile

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "train_parity"
MODEL_REL = "tests/fixtures/models/tiny-llama"
MODEL_DIR = ROOT / MODEL_REL

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from gen_fixtures import TARGET_MODULES  # noqa: E402  (the seven Llama projections)

# Training and validation lines: original sentences written for this project
# (no outside source), dedicated to the public domain. Chosen so that:
# - the three formats alternate and micro-batches need padding (12..64 tokens);
# - one text line (index 3) is longer than max_seq_len and gets truncated, with
#   scored tokens left after truncation;
# - one prompt/completion line (index 6) has an empty completion, so it has no
#   scored token and is dropped (before or after truncation alike);
# - one conversation (index 5) has a system turn and two assistant turns;
# - 9 examples remain, an odd number, so micro-batch 4 straddles the end of the
#   first pass over the data ([8, 0]): the stream is endless, not per epoch.
TRAIN_LINES = [
    {"text": "The red hen finds a bean under the apple tree and carries it home to the farm."},
    {"prompt": "Question: Who barks at night?\nAnswer:", "completion": " The dog barks when the fox comes near."},
    {"messages": [
        {"role": "user", "content": "What does the farmer grow?"},
        {"role": "assistant", "content": "Wheat, beans and apples."},
    ]},
    {"text": "In the summer the river is slow and warm, and the daughter counts 7 fish, 3 frogs "
             "and 12 stones on the bank before the sun goes down behind the hills."},
    {"prompt": "Count the hens: 1, 2,", "completion": " 3, 4, 5."},
    {"messages": [
        {"role": "system", "content": "Be short."},
        {"role": "user", "content": "The fox?"},
        {"role": "assistant", "content": "In the forest."},
        {"role": "user", "content": "The hen?"},
        {"role": "assistant", "content": "On the farm."},
    ]},
    {"prompt": "Tell me about the bees.", "completion": ""},
    {"text": "Bees sleep in the box."},
    {"prompt": "The fox and the dog", "completion": " are not friends, but they keep to their own sides of the fence."},
    {"messages": [
        {"role": "user", "content": "Tell me about the sun."},
        {"role": "assistant", "content": "It is warm."},
    ]},
]
VALID_LINES = [
    {"text": "The dog sleeps in the sun while the hen walks across the yard."},
    {"prompt": "Question: Where does the river turn?\nAnswer:", "completion": " At the edge of the forest."},
    {"messages": [
        {"role": "user", "content": "How many apples are in the basket?"},
        {"role": "assistant", "content": "There are 10 apples."},
    ]},
]

# Hyper-parameters of the run (also written to expected.json).
HP = dict(
    r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGET_MODULES, use_rslora=False,
    max_seq_len=64, batch_size=2, grad_accum=2, shuffle=False, pad_id=0,
    steps=6, lr=1e-2, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.01,
    schedule="cosine", warmup_steps=2,
    # Chosen from this run's pre-clip norms (DoRA 0.95..1.26, LoRA 0.92..1.20): 1.05
    # clips steps 1 and 2 only, for both methods; every norm is >= 6% away from it
    # (checked below with a 2% margin, so small numerical differences in another
    # implementation cannot flip a clipping decision). 1.0 was too close to a LoRA norm.
    grad_clip=1.05,
)
SEED_PEFT_INIT = 7000    # torch.manual_seed before get_peft_model (PEFT's lora_A init)
SEED_LORA_B = 7001       # torch.Generator for lora_B
LORA_B_STD = 0.05
CLIP_MARGIN = 0.02       # no pre-clip norm within 2% of grad_clip
METHODS = {"dora": True, "lora": False}


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------

def tokenize_line(tok, line):
    """(format, ids, scored) as src/text/data.rs computes them, before truncation."""
    if "text" in line:
        ids = tok(line["text"], add_special_tokens=True)["input_ids"]
        return "text", ids, [t > 0 for t in range(len(ids))]
    if "prompt" in line:
        p = tok(line["prompt"], add_special_tokens=True)["input_ids"]
        c = tok(line["completion"], add_special_tokens=False)["input_ids"]
        ids = p + c
        return "prompt_completion", ids, [t >= len(p) and t > 0 for t in range(len(ids))]
    msgs = line["messages"]
    full = tok.apply_chat_template(msgs, tokenize=False)
    ids = tok(full, add_special_tokens=False)["input_ids"]
    scored = [False] * len(ids)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        if i == 0:
            start = 0
        else:
            pre = tok.apply_chat_template(msgs[:i], add_generation_prompt=True, tokenize=False)
            pre_ids = tok(pre, add_special_tokens=False)["input_ids"]
            assert ids[:len(pre_ids)] == pre_ids and full.startswith(pre)
            start = len(pre_ids)
        upto = tok.apply_chat_template(msgs[:i + 1], tokenize=False)
        upto_ids = tok(upto, add_special_tokens=False)["input_ids"]
        assert ids[:len(upto_ids)] == upto_ids and full.startswith(upto)
        for t in range(max(start, 1), min(len(upto_ids), len(ids))):
            scored[t] = True
    return "messages", ids, scored


def check_mask(tok, line, ids, scored):
    """The scored tokens decode to exactly the completion / assistant turns / text."""
    got = tok.decode([i for i, s in zip(ids, scored) if s])
    if "text" in line:
        assert tok.decode(ids) == line["text"] and scored == [t > 0 for t in range(len(ids))]
    elif "prompt" in line:
        assert got == line["completion"], (got, line)
    else:
        want = "".join(m["content"] + "<|im_end|>\n" for m in line["messages"] if m["role"] == "assistant")
        assert got == want, (got, want)


def prepare(tok, lines, max_seq_len):
    """Tokenize, drop examples without a scored token, truncate. Returns (kept, dropped)."""
    kept, dropped = [], []
    for n, line in enumerate(lines):
        fmt, ids, scored = tokenize_line(tok, line)
        check_mask(tok, line, ids, scored)
        if not any(scored):
            dropped.append(n)
            continue
        trunc = len(ids) > max_seq_len
        ids, scored = ids[:max_seq_len], scored[:max_seq_len]
        assert any(scored), "a line whose scored tokens all lie past max_seq_len would be dropped too"
        kept.append(dict(line=n, format=fmt, ids=ids, scored=scored, truncated=trunc))
    return kept, dropped


def micro_batches(examples, batch_size, count, pad_id):
    """The first `count` micro-batches of the endless sequential stream."""
    out = []
    for j in range(count):
        idx = [(j * batch_size + b) % len(examples) for b in range(batch_size)]
        exs = [examples[i] for i in idx]
        t = max(len(e["ids"]) for e in exs)
        input_ids, labels, mask = [], [], []
        for e in exs:
            n = len(e["ids"])
            input_ids.append(e["ids"] + [pad_id] * (t - n))
            labels.append([i if s else -100 for i, s in zip(e["ids"], e["scored"])] + [-100] * (t - n))
            mask.append([1] * n + [0] * (t - n))
        out.append(dict(examples=idx, lengths=[len(e["ids"]) for e in exs],
                        input_ids=input_ids, labels=labels, attention_mask=mask))
    return out


# --------------------------------------------------------------------------
# model / adapters
# --------------------------------------------------------------------------

def load_base():
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(str(MODEL_DIR), dtype=torch.float32,
                                                attn_implementation="eager")


def save_adapter(pm, out_dir):
    """save_pretrained, keeping only the two adapter files (no README.md)."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        pm.save_pretrained(tmp)
        for f in ("adapter_model.safetensors", "adapter_config.json"):
            shutil.copyfile(pathlib.Path(tmp) / f, out_dir / f)


def make_init(use_dora, out_dir):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    torch.manual_seed(SEED_PEFT_INIT)
    cfg = LoraConfig(r=HP["r"], lora_alpha=HP["lora_alpha"], lora_dropout=HP["lora_dropout"],
                     target_modules=HP["target_modules"], use_dora=use_dora, bias="none",
                     task_type="CAUSAL_LM")
    pm = get_peft_model(load_base(), cfg)
    g = torch.Generator().manual_seed(SEED_LORA_B)
    layers = [(n, m) for n, m in pm.named_modules() if isinstance(m, LoraLayer)]
    assert len(layers) == 7 * 2, [n for n, _ in layers]
    with torch.no_grad():
        for _, m in layers:
            b = m.lora_B["default"].weight
            assert not b.any()
            b.copy_(torch.randn(b.shape, generator=g, dtype=torch.float32) * LORA_B_STD)
    pm.peft_config["default"].base_model_name_or_path = MODEL_REL
    save_adapter(pm, out_dir)
    return {n: p.detach().clone() for n, p in pm.named_parameters() if p.requires_grad}


def token_weighted_loss(model, examples):
    """Sum of -log p over every scored target of `examples` / their number
    (each example alone, unpadded; log-softmax in float64)."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for e in examples:
            logits = model(input_ids=torch.tensor([e["ids"]])).logits[0].double()
            tgt = torch.tensor([i if s else -100 for i, s in zip(e["ids"], e["scored"])][1:])
            total += torch.nn.functional.cross_entropy(logits[:-1], tgt, ignore_index=-100,
                                                       reduction="sum").item()
            count += int((tgt != -100).sum())
    return total / count


def train(method, init_dir, final_dir, batches, valid):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import get_cosine_schedule_with_warmup

    pm = PeftModel.from_pretrained(load_base(), str(init_dir), is_trainable=True)
    # everything trainable came from the init file
    saved = load_file(str(init_dir / "adapter_model.safetensors"))
    named = [(n, p) for n, p in pm.named_parameters() if p.requires_grad]
    assert len(named) == len(saved) == 14 * (3 if METHODS[method] else 2), (len(named), len(saved))
    for n, p in named:
        key = n.replace(".default", "")
        key = key[:-len(".weight")] if "lora_magnitude_vector" in key else key
        assert torch.equal(p.detach(), saved[key]), n
    params = [p for _, p in named]
    valid_init = token_weighted_loss(pm, valid)

    opt = torch.optim.AdamW(params, lr=HP["lr"], betas=tuple(HP["betas"]), eps=HP["eps"],
                            weight_decay=HP["weight_decay"], foreach=False)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=HP["warmup_steps"],
                                            num_training_steps=HP["steps"])
    pm.train()
    rec = dict(losses=[], micro_losses=[], grad_norms=[], lrs=[], clipped=[])
    ga = HP["grad_accum"]
    for step in range(HP["steps"]):
        rec["lrs"].append(opt.param_groups[0]["lr"])
        micro = []
        for k in range(ga):
            mb = batches[step * ga + k]
            ids = torch.tensor(mb["input_ids"])
            labels = torch.tensor(mb["labels"])
            out = pm(input_ids=ids, attention_mask=torch.tensor(mb["attention_mask"]), labels=labels)
            # transformers' loss = mean over the non-ignored shifted targets of the micro-batch
            # (checked in float64; it differs from float32 only in summation order)
            with torch.no_grad():
                lg = out.logits.double()[:, :-1].reshape(-1, out.logits.shape[-1])
                manual = torch.nn.functional.cross_entropy(lg, labels[:, 1:].reshape(-1), ignore_index=-100)
            assert abs(manual.item() - out.loss.item()) < 1e-5, (manual, out.loss)
            (out.loss / ga).backward()
            micro.append(out.loss.item())
        total_norm = torch.nn.utils.clip_grad_norm_(params, max_norm=HP["grad_clip"]).item()
        opt.step()
        sched.step()
        opt.zero_grad()
        rec["micro_losses"].append(micro)
        rec["losses"].append(sum(micro) / ga)
        rec["grad_norms"].append(total_norm)
        rec["clipped"].append(total_norm > HP["grad_clip"])
        print(f"  {method} step {step}: lr {rec['lrs'][-1]:.6g} loss {rec['losses'][-1]:.6f} "
              f"grad_norm {total_norm:.6f}{' (clipped)' if rec['clipped'][-1] else ''}")

    pm.peft_config["default"].base_model_name_or_path = MODEL_REL
    save_adapter(pm, final_dir)
    final = {n: p.detach().clone() for n, p in named}
    valid_final_mem = token_weighted_loss(pm, valid)

    # the saved final adapter reproduces the trained model
    pm2 = PeftModel.from_pretrained(load_base(), str(final_dir))
    valid_final = token_weighted_loss(pm2, valid)
    assert valid_final == valid_final_mem, (valid_final, valid_final_mem)
    rec["valid_loss_init"] = valid_init
    rec["valid_loss_final"] = valid_final
    return rec, final


# --------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------

def dumps(obj, indent=0):
    """JSON with nested objects indented and lists of scalars (and lists of
    those) kept on one line each, so that the batches stay small and readable."""
    pad = " " * (indent + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad}{json.dumps(k)}: {dumps(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        if all(isinstance(v, list) and not any(isinstance(x, (dict, list)) for x in v) for v in obj):
            rows = [pad + json.dumps(v, ensure_ascii=False) for v in obj]
        else:
            rows = [pad + dumps(v, indent + 1) for v in obj]
        return "[\n" + ",\n".join(rows) + "\n" + " " * indent + "]"
    return json.dumps(obj, ensure_ascii=False)


def quiet_and_deterministic():
    """One CPU thread, deterministic kernels, no progress bars or warnings."""
    import warnings

    import transformers

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def main():
    import peft
    import safetensors
    import transformers
    from transformers import AutoTokenizer

    quiet_and_deterministic()

    tok = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    assert tok("x", add_special_tokens=True)["input_ids"] == tok("x", add_special_tokens=False)["input_ids"]
    assert tok.pad_token_id == HP["pad_id"] == 0

    OUT.mkdir(parents=True, exist_ok=True)
    data_dir = OUT / "data"
    data_dir.mkdir(exist_ok=True)
    for name, lines in (("train.jsonl", TRAIN_LINES), ("valid.jsonl", VALID_LINES)):
        (data_dir / name).write_text("".join(json.dumps(l, ensure_ascii=False) + "\n" for l in lines),
                                     encoding="utf-8")

    train_ex, train_dropped = prepare(tok, TRAIN_LINES, HP["max_seq_len"])
    valid_ex, valid_dropped = prepare(tok, VALID_LINES, HP["max_seq_len"])
    assert train_dropped == [6] and not valid_dropped, (train_dropped, valid_dropped)
    assert [e["line"] for e in train_ex if e["truncated"]] == [3]
    assert len(train_ex) % HP["batch_size"] == 1, "want a micro-batch across the end of the data"
    n_micro = HP["steps"] * HP["grad_accum"]
    batches = micro_batches(train_ex, HP["batch_size"], n_micro, HP["pad_id"])
    assert any(len(set(b["lengths"])) > 1 for b in batches), "no micro-batch needs padding"
    assert max(max(b["lengths"]) for b in batches) == HP["max_seq_len"]
    for e in train_ex:
        print(f"  train line {e['line']} ({e['format']}): {len(e['ids'])} tokens, "
              f"{sum(e['scored'])} scored{', truncated' if e['truncated'] else ''}")

    inits, finals, runs = {}, {}, {}
    for method, use_dora in METHODS.items():
        inits[method] = make_init(use_dora, OUT / f"init-{method}")
    for n, p in inits["lora"].items():  # same lora_A / lora_B for both methods
        assert torch.equal(p, inits["dora"][n]), n
    for method in METHODS:
        runs[method], finals[method] = train(method, OUT / f"init-{method}", OUT / f"final-{method}",
                                             batches, valid_ex)

    # sanity: finite, changing, clipping on some steps but not all, adapters moved
    for method, rec in runs.items():
        assert all(math.isfinite(x) for x in rec["losses"] + rec["grad_norms"]), rec
        assert len(set(rec["losses"])) == len(rec["losses"]), f"{method}: repeated step loss"
        assert 0 < sum(rec["clipped"]) < HP["steps"], f"{method}: clipped {rec['clipped']}"
        assert all(abs(g - HP["grad_clip"]) > CLIP_MARGIN * HP["grad_clip"] for g in rec["grad_norms"]), \
            f"{method}: a grad norm is too close to grad_clip: {rec['grad_norms']}"
        assert any(not torch.equal(finals[method][n], inits[method][n]) for n in inits[method])
        assert rec["valid_loss_final"] != rec["valid_loss_init"]
    assert runs["dora"]["losses"] != runs["lora"]["losses"]

    batches_out = [{k: b[k] for k in ("examples", "lengths", "input_ids", "labels")} for b in batches]
    expected = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "safetensors": safetensors.__version__},
        "notes": {
            "generator": "tools/gen_train_fixture.py (its docstring gives the full pipeline)",
            "model": f"{MODEL_REL}, float32, attn_implementation=eager, CPU, 1 thread",
            "adapters": "init-<method>/ loaded with PeftModel.from_pretrained(..., is_trainable=True); "
                        "trainable = every lora_A, lora_B (and lora_magnitude_vector for DoRA). lora_A from "
                        "PEFT's init under torch.manual_seed(init_seed), lora_B ~ N(0, lora_B_std^2), same "
                        "values for both methods; DoRA magnitude = PEFT's value at creation (row norms of W, "
                        "lora_B was 0 then), so the DoRA init model already differs from the base.",
            "data": "train.jsonl tokenized as src/text/data.rs does; examples with no scored token dropped "
                    "(train line 6: empty completion), the rest truncated to their first max_seq_len "
                    "tokens (train line 3); kept examples indexed 0..N-1 in file order (train_examples). "
                    "Micro-batch j = stream indices j*batch_size .. j*batch_size+batch_size-1 mod N, no "
                    "shuffle; micro-batch 4 is [8, 0].",
            "batches": "input_ids right-padded with pad_id to the longest example of the micro-batch; "
                       "attention_mask = 1 on the first lengths[b] positions; labels[t] = ids[t] where "
                       "scored else -100 (also at pads and always at t=0): the target of position t-1 is "
                       "labels[t].",
            "loss": "micro-batch loss = transformers' causal-LM loss = cross entropy summed over all "
                    "non-ignored targets of the micro-batch / their number (tokens of the two examples "
                    "pooled, not a mean of per-example means; no num_items_in_batch across the "
                    "accumulation). losses[s] = mean of micro_losses[s] (each micro-batch weighted "
                    "equally, whatever its target count); the gradient is that of losses[s].",
            "grad_norms": "total L2 norm over all trainable gradients before clipping "
                          "(torch.nn.utils.clip_grad_norm_); grads are then scaled by "
                          "min(1, grad_clip / (total_norm + 1e-6)). clipped[s] = grad_norms[s] > grad_clip.",
            "lrs": "learning rate used by optimizer step s: lr * s / warmup_steps for s < warmup_steps, "
                   "then lr * 0.5 * (1 + cos(pi * (s - warmup_steps) / (steps - warmup_steps))) "
                   "(transformers.get_cosine_schedule_with_warmup). Step 0 runs with lr 0: the adapter is "
                   "unchanged but AdamW's step count and moments advance, so step 1 sees the init "
                   "weights with bias corrections for t = 2.",
            "optimizer": "torch.optim.AdamW(foreach=False): decoupled weight decay p *= 1 - lr*wd on "
                         "every trainable tensor (magnitude included), bias-corrected moments.",
            "valid_loss": "valid_loss_init / valid_loss_final: token-weighted mean NLL over all scored "
                          "targets of valid.jsonl (same tokenization, truncation; each example alone, "
                          "log-softmax in float64), with the init / final adapter; not part of training.",
        },
        "hyperparameters": {**HP, "init_seed": SEED_PEFT_INIT, "lora_B_seed": SEED_LORA_B,
                            "lora_B_std": LORA_B_STD, "num_micro_batches": n_micro},
        "train_file": "data/train.jsonl",
        "valid_file": "data/valid.jsonl",
        "train_dropped_lines": train_dropped,
        "train_examples": [{"line": e["line"], "format": e["format"], "length": len(e["ids"]),
                            "scored": sum(e["scored"]), "truncated": e["truncated"]} for e in train_ex],
        "batches": batches_out,
        "dora": runs["dora"],
        "lora": runs["lora"],
    }
    (OUT / "expected.json").write_text(dumps(expected) + "\n", encoding="utf-8")

    total = 0
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            print(f"  {p.relative_to(ROOT)}: {p.stat().st_size} bytes")
    print(f"wrote {OUT} ({total} bytes)")
    assert total < 300_000, total


if __name__ == "__main__":
    # PEFT keeps target_modules as a set, so the order it writes them into
    # adapter_config.json follows Python's per-process string hashing; pin it.
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable] + sys.argv,
                  dict(os.environ, PYTHONHASHSEED="0"))
    main()
