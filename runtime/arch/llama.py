"""Llama 1/2/3 and Mistral (`general.architecture = llama`).

The GGUF q/k weights were permuted at conversion (llama.cpp's convention), so
ggml's "normal" RoPE over interleaved pairs reproduces the Hugging Face model.
Llama 3 files may carry `rope_freqs.weight` (per-pair frequency divisors); the
loader picks that up for every family. Mistral's sliding window (when the
file has one) is not applied, as in llama.cpp's "llama" graph; it only matters
past 4096 tokens of context.
"""
from __future__ import annotations

from .base import Architecture


class Llama(Architecture):
    """Llama family: no q/k/v biases, interleaved-pair RoPE."""

    name = "llama"
    rope_neox = False
    qkv_bias = False
