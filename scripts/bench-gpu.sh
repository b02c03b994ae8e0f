#!/usr/bin/env bash
# The benchmark on a machine with a real GPU, in one bounded run that writes
# one JSON: lists the GPU and what each adapter offers the kernels (features,
# subgroup sizes, cooperative-matrix configurations, workgroup memory), builds
# and runs examples/bench on the embedded model and on each benchmark model,
# then, where python3 has torch, peft and CUDA, PyTorch+PEFT's LoRA/DoRA
# steps (tools/bench_peft.py) on the same models, shape and card. Installs
# nothing and needs no network.
#
#   scripts/bench-gpu.sh [bench arguments, e.g. --batch 4 --seq 128 or --quick]
#
#   OUT=DIR  everything goes there (default ./bench-out): bench-gpu.json (all
#            of it in one file), and the parts it is made of: devices.json,
#            bench.json, peft-*.json, bench-gpu.log
#   BENCH_TIMEOUT=480  seconds for the whole script; each step gets what is left
#   DORA_CACHE_DIR  where the tiled matmul's tile tuning is remembered
#            (default: OUT/cache, so each run tunes afresh on its card and
#            bench-gpu.json carries the winners); DORA_MATMUL_AUTOTUNE=0 or
#            DORA_MATMUL_TILE=128x128 turn the tuning off
#   BENCH_MODELS="DIR..."  model directories to benchmark. A directory holding
#            only a config.json gets random bf16 weights first (written with
#            transformers; throughput does not depend on the values, and a
#            real checkpoint is too big to carry to a remote machine).
#            Default: scripts/bench-models/smollm2-135m and llama-3.2-1b,
#            where python3 has torch and transformers; else none.
#
# Without cargo (a bare GPU image), prebuilt target/release/dora-wgpu and
# target/release/examples/bench are run as they are (carry them there).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./bench-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/bench-gpu.log") 2>&1
deadline=$((SECONDS + ${BENCH_TIMEOUT:-480}))
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# The tiled matmul tunes its tile per shape class on a real GPU: let it, and keep its results.
export DORA_CACHE_DIR=${DORA_CACHE_DIR:-$OUT/cache}
echo "DORA_CACHE_DIR=$DORA_CACHE_DIR (matmul tile tuning: ${DORA_MATMUL_AUTOTUNE:-on}, tile ${DORA_MATMUL_TILE:-tuned})"
failed=()

# step NAME CMD...: runs CMD under the time left; a failure is recorded, not fatal.
step() {
  local name=$1 left=$((deadline - SECONDS))
  shift
  if [ "$left" -lt 10 ]; then
    echo "== $name: skipped, time budget spent"
    failed+=("$name (skipped)")
    return
  fi
  echo "== $name (at most ${left}s): $*"
  timeout -k 5 "$left" "$@" || { echo "== $name failed (exit $?)"; failed+=("$name"); }
}

has_python() { python3 -c "import sys, $1" 2>/dev/null; }

# A driver the loader may not find by itself (NVIDIA's ICD outside the usual folders).
nv_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nv_icd" ] \
  && ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
  export VK_DRIVER_FILES=$nv_icd
  echo "VK_DRIVER_FILES=$VK_DRIVER_FILES"
fi
command -v nvidia-smi >/dev/null && step nvidia-smi nvidia-smi -L
command -v vulkaninfo >/dev/null && step vulkaninfo vulkaninfo --summary
PATH=$PATH:/sbin:/usr/sbin ldconfig -p 2>/dev/null | grep libvulkan.so.1 >/dev/null \
  || echo "warning: no libvulkan.so.1 (Vulkan loader): wgpu may fall back to GL or find no GPU"

if command -v cargo >/dev/null; then
  step build cargo build --release --bin dora-wgpu --example bench
else
  echo "no cargo: running the prebuilt binaries under target/release"
fi
step devices target/release/dora-wgpu devices
target/release/dora-wgpu devices --json >"$OUT/devices.json" 2>/dev/null || true

# The benchmark models: as given, or the committed shapes where random weights can be made.
if [ -z "${BENCH_MODELS+x}" ]; then
  BENCH_MODELS=""
  if has_python "torch, transformers"; then
    BENCH_MODELS="scripts/bench-models/smollm2-135m scripts/bench-models/llama-3.2-1b"
  else
    echo "== no torch/transformers: benchmarking the embedded model only"
  fi
fi
models=()
for dir in $BENCH_MODELS; do
  if ls "$dir"/*.safetensors >/dev/null 2>&1; then
    models+=("$dir")
    continue
  fi
  weights=${TMPDIR:-/tmp}/dora-wgpu-bench-$(basename "$dir")
  step "weights $(basename "$dir")" python3 -c '
import sys, torch, transformers
torch.manual_seed(0)
c = transformers.AutoConfig.from_pretrained(sys.argv[1])
transformers.AutoModelForCausalLM.from_config(c, dtype=torch.bfloat16).save_pretrained(sys.argv[2])
print("random weights for", sys.argv[1], "in", sys.argv[2])' "$dir" "$weights"
  [ -f "$weights/model.safetensors" ] && models+=("$weights")
done
model_args=()
for m in "${models[@]}"; do model_args+=(--model "$m"); done

# Shorter memory runs than the bench's defaults, to stay within the budget with
# a 1B model (the bench takes the first of repeated options: the caller's win),
# and the per-kernel profile of one training step, for tuning on this card.
step bench target/release/examples/bench --json "$OUT/bench.json" "${model_args[@]}" "$@" \
  --memory-steps 100 --model-memory-steps 20 --profile

# The same models and shape for PyTorch+PEFT: the embedded default model
# (assets/default-model) and each benchmark model; --quick trains 2 × 32 there.
batch=4 seq=128
while [ $# -gt 0 ]; do
  case $1 in
    --batch) batch=$2; shift ;;
    --seq) seq=$2; shift ;;
    --quick) quick=1 ;;
  esac
  shift
done
if [ -n "${quick:-}" ]; then batch=2 seq=32; fi
peft_device=cpu
if has_python "torch, peft, transformers; sys.exit(not torch.cuda.is_available())"; then
  peft_device=cuda
fi
if [ "$peft_device" = cuda ] || [ -n "${BENCH_PEFT_CPU:-}" ]; then
  for m in assets/default-model "${models[@]}"; do
    name=$(basename "$m")
    step "peft $name" python3 tools/bench_peft.py --device "$peft_device" --model "$m" \
      --batch "$batch" --seq "$seq" --json "$OUT/peft-$name.json"
  done
else
  echo "== PyTorch+PEFT skipped: python3 lacks torch/peft/transformers or CUDA (BENCH_PEFT_CPU=1 runs it on the CPU)"
fi

# One JSON with every part (each part also stays in its own file).
if command -v python3 >/dev/null; then
  python3 - "$OUT" "${failed[@]+"${failed[@]}"}" <<'EOF' || failed+=("combine")
import glob, json, os, sys
out, failed = sys.argv[1], sys.argv[2:]
def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
combined = {
    "devices": load(os.path.join(out, "devices.json")),
    "bench": load(os.path.join(out, "bench.json")),
    "peft": {os.path.basename(p)[5:-5]: load(p) for p in sorted(glob.glob(os.path.join(out, "peft-*.json")))},
    "matmul_tiles": load(os.path.join(os.environ.get("DORA_CACHE_DIR", ""), "matmul-tiles.json")),
    "failed_steps": failed,
}
with open(os.path.join(out, "bench-gpu.json"), "w") as f:
    json.dump(combined, f, indent=1)
print("wrote", os.path.join(out, "bench-gpu.json"))
EOF
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "== failed: ${failed[*]}"
  exit 1
fi
echo "== done: $OUT/bench-gpu.json"
