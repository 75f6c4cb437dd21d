#!/usr/bin/env bash
# Install edgeslim (editable) with the converter and test extras into the current Python.
# torch is installed first as the pinned CPU build, so that resolving the
# "convert" extra never pulls a multi-GB CUDA wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
"$PY" -c "import torch" 2>/dev/null || pip_install "torch==2.13.0"
extras="convert,dev,charts"
case "$(uname -s)-$(uname -m)" in
  Darwin-arm64) extras="$extras,mlx" ;;
  Linux-*) "$PY" -c "import mlx.core" 2>/dev/null || pip_install "mlx[cpu]" || echo "note: mlx[cpu] not installed; MLX tests will skip" >&2 ;;
esac
pip_install -e ".[$extras]"
# mlx-lm: a peer that `edgeslim sweep` and scripts/bench_quality.py compare against (optional)
"$PY" -c "import mlx_lm" 2>/dev/null || pip_install mlx-lm || echo "note: mlx-lm not installed; sweeps skip its files" >&2
