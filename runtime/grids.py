"""Lattice grids and non-linear code tables of llama.cpp's IQ types (numba kernels, MLX transcoder).

One accessor per table, read from the `gguf` package (which ships them as
data, the same tables llama.cpp's ggml-common.h holds); when edgeslim's own
references in `edgeslim.quants` carry them, each function's body becomes a
one-line read of that module's array.  gguf is imported only when a table is
first asked for; results are cached.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


def _gguf_quant(name: str):
    import gguf.quants

    cls = getattr(gguf.quants, name)
    if getattr(cls, "grid_hex", None) is not None:
        cls.init_grid()
    return cls


@lru_cache(maxsize=None)
def iq4nl_values() -> np.ndarray:
    """(16,) int8: IQ4_NL / IQ4_XS code -> value (w = d * value)."""
    return np.array(_gguf_quant("IQ4_NL").kvalues, dtype=np.int8)


@lru_cache(maxsize=None)
def grid(name: str) -> np.ndarray:
    """(rows, 8 or 4) int8 lattice grid of an IQ type: IQ2_* {8, 25, 43}, IQ3_XXS {4..62},
    IQ3_S {1..15}, IQ1_* {-1, 0, 1} (w = scale * grid * sign, or scale * (grid + delta))."""
    cls = _gguf_quant(name)
    return np.asarray(cls.grid, np.float32).reshape(cls.grid_shape).astype(np.int8)


@lru_cache(maxsize=None)
def ksigns() -> np.ndarray:
    """(128,) uint8: IQ2_XXS/IQ2_XS/IQ3_XXS 7-bit sign index -> 8 sign bits (bit 7 = parity)."""
    return np.frombuffer(_gguf_quant("IQ2_XXS").ksigns, np.uint8)


@lru_cache(maxsize=None)
def iq1_delta() -> float:
    """IQ1_S / IQ1_M grid offset: w = dl * (grid +- delta)."""
    return float(_gguf_quant("IQ1_S").delta)
