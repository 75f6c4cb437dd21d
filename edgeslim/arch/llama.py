"""Llama 1/2/3 and Mistral -> GGUF arch "llama" (as llama.cpp converts and runs them).

* Q/K rows are interleaved at conversion (`permute_qk`): HF Llama rotates row i with
  row i + head_dim/2 (rotate-half), llama.cpp's "llama" RoPE rotates adjacent rows.
* Llama-3.1 RoPE scaling (`rope_type: llama3`) becomes the per-frequency divisor tensor
  `rope_freqs.weight` (head_dim/2 floats), which the runtime (like llama.cpp) multiplies
  into the rotation period; linear and yarn scaling are metadata keys (see base).
* Mistral is the same layout plus `llama.attention.sliding_window` when its config sets
  one. The runtime, like llama.cpp's "llama" graph, does not apply that window: logits
  equal Hugging Face's up to the window (4096 tokens for Mistral-7B v0.1; later Mistrals
  set none) and follow llama.cpp past it.
"""
from __future__ import annotations

import math

import numpy as np

from ..tables import Keys, TensorNames
from .base import Family


def llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """(head_dim/2,) float32 divisors of the RoPE frequencies for `rope_type: llama3`.

    High frequencies (wavelength < orig_ctx/high_freq_factor) keep 1, low ones
    (wavelength > orig_ctx/low_freq_factor) get `factor`, and the band between is
    a smooth blend, as in Meta's reference and llama.cpp's converter.
    """
    base = float(rope.get("rope_theta", 10000.0))
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    orig_ctx = float(rope.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < orig_ctx / high:
            out.append(1.0)
        elif wavelen > orig_ctx / low:
            out.append(factor)
        else:
            smooth = (orig_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, np.float32)


class Llama(Family):
    """Llama family: no q/k/v biases, interleaved-pair RoPE (Q/K permuted at conversion)."""

    name = "llama"
    hf_model_types = ("llama",)
    hf_architectures = ("LlamaForCausalLM", "LLaMAForCausalLM")
    hf_module, hf_prefix = "llama", "Llama"
    permute_qk = True
    rope_neox = False
    free_head_dim = True  # llama.cpp's "llama" graph sizes q and the attention output by head_dim

    def extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        if self.rope.get("rope_type") == "llama3":
            return [(TensorNames.ROPE_FREQS, llama3_rope_factors(self.rope, self.head_dim))]
        return []


class Mistral(Llama):
    """Mistral 7B-style: the Llama layout, with the sliding-window size as metadata."""

    hf_model_types = ("mistral",)
    hf_architectures = ("MistralForCausalLM",)
    hf_module, hf_prefix = "mistral", "Mistral"

    def metadata(self) -> list[tuple[str, object]]:
        out = super().metadata()
        window = self.config.get("sliding_window")
        if isinstance(window, int) and window > 0:
            out.append((self.key(Keys.SLIDING_WINDOW), window))
        return out
