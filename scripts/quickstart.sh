#!/usr/bin/env bash
# The first command: sets up a GPU driver if the machine has none, then fits
# a DoRA layer on the GPU and prints the loss falling.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-mesa.sh
cargo run --release --example quickstart
