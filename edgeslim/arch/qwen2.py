"""Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`) -> GGUF arch "qwen2".

The Llama layout plus q/k/v biases; RoPE is the NEOX form (x[i] with x[i + n_rot/2]),
the same as HF's rotate-half, so Q/K rows are written unpermuted.
"""
from __future__ import annotations

from ..tables import TensorNames
from .base import Family


class Qwen2(Family):
    """Qwen2 family: q/k/v biases, NEOX RoPE, no Q/K permutation."""

    name = "qwen2"
    hf_model_types = ("qwen2",)
    hf_architectures = ("Qwen2ForCausalLM",)
    hf_module, hf_prefix = "qwen2", "Qwen2"
    rope_neox = True
    BLOCK_MAP = {
        **Family.BLOCK_MAP,
        "self_attn.q_proj.bias": TensorNames.ATTN_Q_BIAS,
        "self_attn.k_proj.bias": TensorNames.ATTN_K_BIAS,
        "self_attn.v_proj.bias": TensorNames.ATTN_V_BIAS,
    }
