#!/usr/bin/env bash
# The first command: sets up a GPU driver if the machine has none, then
# fine-tunes the embedded default model with DoRA on the embedded data,
# printing validation loss and a sample answer before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-mesa.sh
cargo run --release -- train "$@"
