"""Lattice grids and non-linear code tables of llama.cpp's IQ types, for the kernels.

One accessor per table, read from the `gguf` package (which ships them as
data, the same tables llama.cpp's ggml-common.h holds); when edgeslim's own
references in `edgeslim.quants` carry them, each function's body becomes a
one-line read of that module's array.  Imported lazily (gguf only when an IQ
type is prepared or compiled) and cached.
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
