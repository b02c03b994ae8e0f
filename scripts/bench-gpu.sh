#!/usr/bin/env bash
# The benchmark on a machine with a real GPU, in one bounded run: lists the
# GPU and the adapters wgpu sees, builds and runs the benchmark (arguments go
# to it, e.g. --model DIR --batch 4 --seq 128), then, where python3 has torch,
# peft and CUDA, the PyTorch+PEFT LoRA/DoRA comparison (tools/bench_peft.py)
# on the same models and shape. Installs nothing and needs no network.
#
#   OUT=DIR  reports and the log go there (default ./bench-out): bench-gpu.json,
#            peft-gpu-default.json, peft-gpu.json (--model), bench-gpu.log
#   BENCH_TIMEOUT=480  seconds for the whole script; each step gets what is left
#   BENCH_RANDOM_MODEL=DIR  a directory with only a config.json (no weights):
#            random bf16 weights are written from it and benchmarked as --model
#            (throughput does not depend on the values; a 135M model is too big
#            to carry to a remote machine)
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

if [ -n "${BENCH_RANDOM_MODEL:-}" ]; then
  random_dir=${TMPDIR:-/tmp}/dora-wgpu-bench-model
  step random-model python3 -c '
import sys, torch, transformers
torch.manual_seed(0)
c = transformers.AutoConfig.from_pretrained(sys.argv[1])
transformers.AutoModelForCausalLM.from_config(c, dtype=torch.bfloat16).save_pretrained(sys.argv[2])
print("random weights for", sys.argv[1], "in", sys.argv[2])' "$BENCH_RANDOM_MODEL" "$random_dir"
  set -- --model "$random_dir" "$@"
fi

if command -v cargo >/dev/null; then
  step build cargo build --release --bin dora-wgpu --example bench
else
  echo "no cargo: running the prebuilt binaries under target/release"
fi
step devices target/release/dora-wgpu devices
step bench target/release/examples/bench --json "$OUT/bench-gpu.json" "$@"

# The same models and shape for PyTorch+PEFT: the bench's embedded default model
# (assets/default-model) and --model if given; --quick trains 2 × 32 there.
model="" batch=4 seq=128
while [ $# -gt 0 ]; do
  case $1 in
    --model) model=$2; shift ;;
    --batch) batch=$2; shift ;;
    --seq) seq=$2; shift ;;
    --quick) quick=1 ;;
  esac
  shift
done
if [ -n "${quick:-}" ]; then batch=2 seq=32; fi
if python3 -c 'import sys, torch, peft, transformers; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  step peft-default python3 tools/bench_peft.py --device cuda --model assets/default-model \
    --batch "$batch" --seq "$seq" --json "$OUT/peft-gpu-default.json"
  if [ -n "$model" ]; then
    step peft python3 tools/bench_peft.py --device cuda --model "$model" \
      --batch "$batch" --seq "$seq" --json "$OUT/peft-gpu.json"
  fi
else
  echo "== PyTorch+PEFT skipped: python3 lacks torch/peft/transformers or CUDA"
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "== failed: ${failed[*]}"
  exit 1
fi
echo "== done: reports in $OUT"
