"""Llama 1/2/3 (`LlamaForCausalLM`) -> GGUF arch "llama", as llama.cpp converts it.

Two things differ from a plain rename:

* Q/K row order. HF Llama applies RoPE with `rotate_half`: inside each head of
  `head_dim` rows, row i is rotated together with row i + head_dim/2. llama.cpp's
  "llama" RoPE rotates adjacent rows (2i, 2i+1). So each head's rows are
  interleaved on the way in:

      HF head rows   [ a0 a1 ... a(d/2-1) | b0 b1 ... b(d/2-1) ]
      GGUF head rows [ a0 b0 a1 b1 ... a(d/2-1) b(d/2-1) ]

  This permutation lives only here (`permute_rows` / `unpermute_rows`).
* Llama-3.1 RoPE scaling (`rope_type: llama3`) becomes the per-frequency divisor
  tensor `rope_freqs.weight` (head_dim/2 floats), which llama.cpp multiplies into
  the rotation period; linear and yarn scaling become metadata keys (see base).
"""
from __future__ import annotations

import math

import numpy as np

from edgeslim.tables import TensorNames

from .base import Arch

_Q = TensorNames.ATTN_Q.split("{bid}")[1]  # ".attn_q.weight"
_K = TensorNames.ATTN_K.split("{bid}")[1]


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """(n_head*d, ...) HF rotate-half rows -> interleaved pairs; 1-D biases too."""
    rest = w.shape[1:]
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of `permute_rows`."""
    rest = w.shape[1:]
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


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


class LlamaArch(Arch):
    """Llama 1/2/3: rotate-half Q/K permuted to llama.cpp's interleaved order."""

    hf_model_types = ("llama",)
    hf_architectures = ("LlamaForCausalLM", "LLaMAForCausalLM")
    gguf_arch = "llama"

    def _heads_for(self, gguf_name: str) -> int | None:
        if gguf_name.endswith(_Q):
            return self.n_heads
        if gguf_name.endswith(_K):
            return self.n_kv_heads
        return None

    def transform(self, gguf_name: str, w: np.ndarray) -> np.ndarray:
        n = self._heads_for(gguf_name)
        return w if n is None else permute_rows(w, n)

    def untransform(self, gguf_name: str, w: np.ndarray) -> np.ndarray:
        n = self._heads_for(gguf_name)
        return w if n is None else unpermute_rows(w, n)

    def extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        if self.rope.get("rope_type") == "llama3":
            return [(TensorNames.ROPE_FREQS, llama3_rope_factors(self.rope, self.head_dim))]
        return []
