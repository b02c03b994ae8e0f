#!/usr/bin/env bash
# The test command: sets up a GPU driver if the machine has none, then runs
# the whole suite on the default adapter (Vulkan) and again on the GL backend.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-mesa.sh

echo "== tests on the default adapter (Vulkan where available)"
cargo test "$@"
# Every tile of the tiled family (128x128, 64x64, 32x128, 128x32) is forced
# by tests/matmul_tiles.rs in the passes on the default adapter and on GL;
# this pass runs the rest with the tiles real GPUs would default to.
echo "== matmul, layer and gradient tests with the workgroup-tiled kernels (what real GPUs run)"
DORA_MATMUL_KERNELS=tiled cargo test --test kernels --test layers --test gradients "$@"
echo "== attention through the fused kernels (what long sequences take): models against transformers, training against PEFT"
DORA_ATTENTION=fused cargo test --test model_ops --test llama "$@"
DORA_ATTENTION=fused cargo test --test train "$@" -- matches_peft the_step_memory_estimate
echo "== benchmark, quick mode (completes and prints finite figures)"
cargo run --example bench -- --quick
echo "== tests on the GL backend"
# One test thread: wgpu's GL backend serialises every call on one context lock
# and panics after waiting 6 s for it, which a thread compiling a kernel or
# waiting on a long dispatch under llvmpipe can exceed.
WGPU_BACKEND=gl RUST_TEST_THREADS=1 cargo test "$@"
