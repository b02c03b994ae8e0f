#!/usr/bin/env python3
"""Writes tests/fixtures/train_parity/qdora/: PEFT DoRA training on a
quantized GGUF base, the reference for training over blocks kept on the GPU.

    pip install torch "transformers>=5" peft safetensors gguf numpy
    python3 tools/gen_qdora_fixture.py

The base is tests/fixtures/gguf_model/tiny-llama.gguf (written by
tools/gen_gguf_model_fixture.py: the tiny Llama with its projections in
Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, F16, BF16 and F32). PEFT cannot load a GGUF
file, so PEFT trains the model as transformers holds it: every tensor
decoded by gguf-py (`gguf.quants.dequantize`) to float32, llama.cpp's q/k
row permutation undone. dora-wgpu trains the same file with the blocks kept
quantized on the GPU and decoded inside its kernels; the two must agree.

Everything else is tools/gen_train_fixture.py's DoRA run, reused from it:
the data (train_parity/data), the micro-batches, the hyper-parameters, the
seeds of lora_A and lora_B. The DoRA magnitude is PEFT's value at creation,
the row norms of the decoded base. Outputs: init-dora/, final-dora/ and
expected.json (the step losses, pre-clip gradient norms, lrs, validation
losses, and the format of each base tensor).
"""
import json
import math
import os
import pathlib
import sys

import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gen_train_fixture as run  # noqa: E402
from gen_gguf_model_fixture import decode_file  # noqa: E402

ROOT = HERE.parent
GGUF_REL = "tests/fixtures/gguf_model/tiny-llama.gguf"
OUT = ROOT / "tests" / "fixtures" / "train_parity" / "qdora"


def main():
    import gguf
    import peft
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    run.quiet_and_deterministic()
    config = AutoConfig.from_pretrained(str(run.MODEL_DIR))
    shapes = {k: v.shape for k, v in run.load_base().state_dict().items()}
    cfg = json.loads((run.MODEL_DIR / "config.json").read_text())
    state, formats = decode_file(str(ROOT / GGUF_REL), gguf.MODEL_ARCH.LLAMA, cfg, shapes)
    quantized = sorted({f for f in formats.values() if f.startswith("Q")})
    assert {"Q4_0", "Q4_1"} <= set(quantized), quantized

    def load_quantized_base():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                                 attn_implementation="eager")
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all(m == "lm_head.weight" for m in missing), (missing, unexpected)
        model.tie_weights()
        return model.eval()

    # gen_train_fixture's functions build their model through run.load_base.
    original_base = run.load_base
    run.load_base = load_quantized_base
    run.MODEL_REL = GGUF_REL
    OUT.mkdir(parents=True, exist_ok=True)

    tok = AutoTokenizer.from_pretrained(str(run.MODEL_DIR))
    train_ex, _ = run.prepare(tok, run.TRAIN_LINES, run.HP["max_seq_len"])
    valid_ex, _ = run.prepare(tok, run.VALID_LINES, run.HP["max_seq_len"])
    batches = run.micro_batches(train_ex, run.HP["batch_size"],
                                run.HP["steps"] * run.HP["grad_accum"], run.HP["pad_id"])

    init = run.make_init(True, OUT / "init-dora")
    rec, final = run.train("dora", OUT / "init-dora", OUT / "final-dora", batches, valid_ex)

    # the quantized base is not the f32 one: the run differs from train_parity's
    with torch.no_grad():
        dense = original_base().state_dict()
        moved = max(float((dense[k] - v).abs().max()) for k, v in state.items())
    assert moved > 1e-3, moved
    assert all(math.isfinite(x) for x in rec["losses"] + rec["grad_norms"]), rec
    assert len(set(rec["losses"])) == len(rec["losses"])
    assert 0 < sum(rec["clipped"]) < run.HP["steps"], rec["clipped"]
    assert all(abs(g - run.HP["grad_clip"]) > run.CLIP_MARGIN * run.HP["grad_clip"] for g in rec["grad_norms"]), \
        f"a grad norm is too close to grad_clip: {rec['grad_norms']}"
    assert any(not torch.equal(final[n], init[n]) for n in init)

    expected = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
        "notes": {
            "generator": "tools/gen_qdora_fixture.py",
            "base": f"{GGUF_REL} decoded by gguf-py to float32 (q/k unpermuted); PEFT DoRA on it",
            "run": "tools/gen_train_fixture.py's DoRA run: train_parity/data, its micro-batches "
                   "and hyper-parameters (train_parity/expected.json)",
            "base_max_abs_change": moved,
        },
        "formats": formats,
        "dora": rec,
    }
    (OUT / "expected.json").write_text(run.dumps(expected) + "\n", encoding="utf-8")
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"  {p.relative_to(ROOT)}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable] + sys.argv,
                  dict(os.environ, PYTHONHASHSEED="0"))
    main()
