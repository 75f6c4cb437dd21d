#!/usr/bin/env bash
# The main job on the bundled demo model: convert it for an 8 GB M2 MacBook, then generate.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
mkdir -p out
edgeslim convert edgeslim/demo -o out/demo.gguf --target m2-8gb --force
edgeslim inspect out/demo.gguf | head -n 14
edgeslim generate out/demo.gguf -p "Once upon a time" -n 120 --temp 0
