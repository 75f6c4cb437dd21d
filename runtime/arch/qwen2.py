"""Qwen2 / Qwen2.5 (`general.architecture = qwen2`).

Differences from Llama: q, k and v projections have biases, and RoPE is the
NEOX form (rotates x[i] with x[i + n_rot/2]; q/k are not permuted at
conversion).
"""
from __future__ import annotations

from .base import Architecture


class Qwen2(Architecture):
    """Qwen2 family: q/k/v biases, NEOX RoPE."""

    name = "qwen2"
    rope_neox = True
    qkv_bias = True
