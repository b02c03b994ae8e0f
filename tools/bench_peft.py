#!/usr/bin/env python3
"""PyTorch + PEFT side of the benchmark: LoRA and DoRA training-step throughput.

    pip install torch "transformers>=5" peft safetensors
    python3 tools/bench_peft.py --model DIR [--device cpu|cuda] [--batch 4] [--seq 128]
        [--steps 5] [--warmup 2] [--rank 8] [--alpha 16] [--dtype float32|bfloat16]
        [--attn sdpa|eager] [--json FILE]

The same measurement as `cargo run --release --example bench -- --model DIR`
(its "training steps" table), done with Hugging Face PEFT so the two can be
reported side by side on the same machine. For each method (lora, dora):

- AutoModelForCausalLM.from_pretrained(DIR, dtype, attn_implementation) (sdpa by
  default: what transformers picks for a PyTorch user; --attn eager for the
  explicit softmax(QKᵀ)V), then get_peft_model with LoraConfig(r, lora_alpha,
  all seven projections, lora_dropout 0, use_dora=method == "dora");
- AdamW(lr 1e-4) on the trainable parameters; random token batches [batch, seq]
  from a fixed seed (the same for both methods), labels = input_ids;
- `warmup` untimed steps, then `steps` timed ones, each forward + backward +
  optimizer.step() + zero_grad() (torch.cuda.synchronize() before the clock is
  read on cuda). tokens/s = batch·seq / median step time.

Peak memory, weights included (like the Rust bench's peak_gpu_bytes):
  cuda  torch.cuda.max_memory_allocated() (reset before the model is loaded);
  cpu   peak resident set size (resource.getrusage ru_maxrss) during the steps
        minus the RSS of the process after importing torch/transformers/peft and
        before loading the model. RSS is process-wide and cannot go down, so each
        method runs in a fresh subprocess (this script re-runs itself with
        --worker METHOD). The high-water mark is reset after loading (Linux
        /proc/self/clear_refs), so load-time transients (the bf16 file mapped
        while converted to float32) are left out; where that reset is not
        possible the figure includes loading, and "peak_includes_load" says so.

effective GFLOP/s uses the Rust bench's formula (examples/bench/measure.rs,
effective_flops_per_step), from config.json: a frozen base costs 4·P·T (forward
2·P·T, backward to the activations 2·P·T, no weight gradient) with P = the
parameters of the seven projections in all layers + vocab·hidden (LM head) and
T = batch·seq tokens, plus attention 12·T_seq²·(heads·head_dim)·batch·layers
(QKᵀ and PV: 4·seq²·q forward, 8·seq²·q backward). Adapters, norms, softmax and
DoRA's norm are left out, so it is a throughput in "useful" FLOPs, comparable
between methods and with the Rust figures.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
METHODS = ("lora", "dora")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="Hugging Face model directory (Llama-style)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--json", help="write the report here")
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)  # internal
    return p.parse_args(argv)


def effective_flops_per_step(config, batch, seq):
    """examples/bench/measure.rs effective_flops_per_step, from a config.json dict."""
    h = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or h // heads
    q = heads * head_dim
    kv = config.get("num_key_value_heads", heads) * head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * config["intermediate_size"]
    body = per_layer * config["num_hidden_layers"]
    head = config["vocab_size"] * h
    tokens = batch * seq
    attention = 12 * seq * seq * q * batch * config["num_hidden_layers"]
    return 4.0 * (body + head) * tokens + attention


def rss_bytes(field):
    """VmRSS / VmHWM of this process from /proc, in bytes (None if unreadable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def maxrss_bytes():
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # Linux reports KiB


def reset_peak_rss():
    """Resets the RSS high-water mark to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    # Check that getrusage followed (it also keeps the pre-exec peak).
    return maxrss_bytes() <= (rss_bytes("VmRSS") or 0) + (16 << 20)


def worker(args):
    """Measures one method in this process; prints one JSON line."""
    import torch
    import transformers
    import peft
    from peft import LoraConfig, get_peft_model

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)

    if args.device == "cpu":
        baseline = rss_bytes("VmRSS") or maxrss_bytes()  # interpreter + libraries
    else:
        torch.cuda.reset_peak_memory_stats()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.model, dtype=dtype, attn_implementation=args.attn
    ).to(device)
    model.config.use_cache = False
    lcfg = LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        target_modules=TARGET_MODULES,
        lora_dropout=0.0,
        use_dora=args.worker == "dora",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lcfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4)

    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(7)
    n = args.warmup + args.steps
    batches = [torch.randint(0, vocab, (args.batch, args.seq), generator=gen) for _ in range(n)]

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    import gc

    gc.collect()
    peak_includes_load = True
    if args.device == "cpu":
        peak_includes_load = not reset_peak_rss()
    times, losses = [], []
    for i, ids in enumerate(batches):
        ids = ids.to(device)
        sync()
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        dt = time.perf_counter() - t
        losses.append(loss.item())
        if i >= args.warmup:
            times.append(dt)
        print(f"  {args.worker} step {i} {'(warmup) ' if i < args.warmup else ''}{dt:.3f} s"
              f" loss {losses[-1]:.4f}", file=sys.stderr, flush=True)
    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = maxrss_bytes() - baseline
    step_s = statistics.median(times)
    out = {
        "method": args.worker,
        "tokens_per_s": args.batch * args.seq / step_s,
        "step_s": step_s,
        "mean_step_s": statistics.fmean(times),
        "step_times_s": times,
        "peak_bytes": peak,
        "trainable_params": trainable,
        "losses": losses,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else None,
    }
    if args.device == "cpu":
        out["rss_baseline_bytes"] = baseline
        out["peak_includes_load"] = peak_includes_load
    print(json.dumps(out), flush=True)


def main():
    args = parse_args()
    if args.worker:
        return worker(args)
    if args.steps < 1:
        sys.exit("--steps must be at least 1")
    with open(os.path.join(args.model, "config.json")) as f:
        config = json.load(f)
    flops = effective_flops_per_step(config, args.batch, args.seq)
    # The parent imports no torch: it stays small, so a worker's peak RSS is its own.
    base_cmd = [sys.executable, os.path.abspath(__file__), "--model", args.model]
    for name in ("device", "batch", "seq", "steps", "warmup", "rank", "alpha", "dtype", "attn"):
        base_cmd += [f"--{name}", str(getattr(args, name))]
    print(f"PyTorch+PEFT on {args.device}: {args.model}, batch {args.batch} × {args.seq}, "
          f"r {args.rank}, alpha {args.alpha:g}, {args.dtype}, attention {args.attn}, "
          f"{args.warmup} warmup + {args.steps} timed steps, each method in its own process",
          flush=True)
    runs = []
    for method in METHODS:
        proc = subprocess.run(base_cmd + ["--worker", method], stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            sys.exit(f"{method} worker failed (exit {proc.returncode})")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["effective_gflops"] = flops / r["step_s"] / 1e9
        runs.append(r)

    lora, dora = runs
    time_ratio = dora["step_s"] / lora["step_s"]
    mem_ratio = dora["peak_bytes"] / lora["peak_bytes"]
    print(f"\n{'method':>6} {'step s':>8} {'mean s':>8} {'tokens/s':>9} {'peak MiB':>9} "
          f"{'GFLOP/s':>8} {'trainable':>10}")
    for r in runs:
        print(f"{r['method']:>6} {r['step_s']:>8.3f} {r['mean_step_s']:>8.3f} "
              f"{r['tokens_per_s']:>9.1f} {r['peak_bytes'] / 2**20:>9.1f} "
              f"{r['effective_gflops']:>8.2f} {r['trainable_params']:>10}")
    print(f"DoRA/LoRA step time {time_ratio:.3f}, peak memory {mem_ratio:.3f}")
    print(f"effective FLOPs per step {flops / 1e9:.4g} G (examples/bench/measure.rs formula); "
          f"torch {lora['torch']}, peft {lora['peft']}, {lora['threads']} threads")
    if args.device == "cpu" and any(r.get("peak_includes_load") for r in runs):
        print("note: the RSS high-water mark could not be reset, peaks include model loading")

    report = {
        "device": args.device,
        "device_name": lora["device_name"],
        "torch": lora["torch"],
        "transformers": lora["transformers"],
        "peft": lora["peft"],
        "model": args.model,
        "dtype": args.dtype,
        "attn_implementation": args.attn,
        "batch": args.batch,
        "seq": args.seq,
        "rank": args.rank,
        "alpha": args.alpha,
        "warmup": args.warmup,
        "steps": args.steps,
        "threads": lora["threads"],
        "effective_flops_per_step": flops,
        "runs": runs,
        "dora_lora_time_ratio": time_ratio,
        "dora_lora_memory_ratio": mem_ratio,
        "notes": "step_s: median of the timed steps (forward+backward+AdamW step+zero_grad); "
        "tokens_per_s = batch*seq/step_s; peak_bytes: cuda max_memory_allocated, cpu peak RSS "
        "during the steps minus the RSS after imports (each method in its own process); "
        "effective_gflops: examples/bench/measure.rs effective_flops_per_step / step_s.",
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
