#!/usr/bin/env bash
# Install edgeslim (editable) with the converter, server and test extras into the current Python.
# torch is installed first as the pinned CPU build, so that resolving the
# "convert" extra never pulls a multi-GB CUDA wheel.
# The browser and desktop tests need Debian's chromium + chromedriver, Xvfb and xdotool:
# installed here with apt-get when running as root and missing; where that is impossible
# the install goes on and those tests skip, saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
"$PY" -c "import torch" 2>/dev/null || pip_install "torch==2.13.0"
extras="convert,serve,dev,charts"
case "$(uname -s)-$(uname -m)" in
  Darwin-arm64) extras="$extras,mlx" ;;
  Linux-*) "$PY" -c "import mlx.core" 2>/dev/null || pip_install "mlx[cpu]" || echo "note: mlx[cpu] not installed; MLX tests will skip" >&2 ;;
esac
pip_install -e ".[$extras]"
# Opt-in (CI sets it): llama-cpp-python from its source distribution, for the cross-checks
# against llama.cpp (tests/*llamacpp*, tokenizer and logits checks). pip caches the wheel it
# builds, so only a fresh machine pays the ~13-minute compile; without it those tests skip.
if [ -n "${EDGESLIM_WITH_LLAMACPP:-}" ] && ! "$PY" -c "import llama_cpp" 2>/dev/null; then
  CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DGGML_BLAS=OFF -DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
    pip_install "llama-cpp-python==0.3.36" \
    || echo "note: llama-cpp-python did not build; the llama.cpp cross-checks will skip" >&2
fi

# System packages for the browser (chat page) and desktop (Tk under Xvfb) tests; best effort.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v Xvfb >/dev/null 2>&1 || missing+=(xvfb)
command -v xdotool >/dev/null 2>&1 || missing+=(xdotool)
"$PY" -c "import tkinter" 2>/dev/null || missing+=(python3-tk)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >/dev/null 2>&1 \
      || echo "note: could not apt-get install ${missing[*]}; the browser/desktop tests will skip" >&2
  else
    echo "note: ${missing[*]} missing (needs root + apt-get); the browser/desktop tests will skip" >&2
  fi
fi
# mlx-lm: a peer that `edgeslim sweep` and scripts/bench_quality.py compare against (optional)
"$PY" -c "import mlx_lm" 2>/dev/null || pip_install mlx-lm || echo "note: mlx-lm not installed; sweeps skip its files" >&2
