"""Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`) -> GGUF arch "qwen2".

Llama layout plus Q/K/V biases. llama.cpp's qwen2 uses NeoX-style RoPE (rotate
half), the same as HF, so Q/K rows are written unpermuted.
"""
from __future__ import annotations

from edgeslim.tables import TensorNames

from .base import Arch


class Qwen2Arch(Arch):
    """Qwen2: biases on q/k/v, no Q/K permutation."""

    hf_model_types = ("qwen2",)
    hf_architectures = ("Qwen2ForCausalLM",)
    gguf_arch = "qwen2"

    BLOCK_MAP = {
        **Arch.BLOCK_MAP,
        "self_attn.q_proj.bias": TensorNames.ATTN_Q_BIAS,
        "self_attn.k_proj.bias": TensorNames.ATTN_K_BIAS,
        "self_attn.v_proj.bias": TensorNames.ATTN_V_BIAS,
    }
