"""The reference backend: every weight dequantized to float32 at load, matmuls by numpy (BLAS).

Memory: F32 weights are used in place from the mmap (no copy); every other
type is dequantized once with edgeslim's numpy references
(`edgeslim.quants`), so a model takes 4 bytes per weight in RAM. That is fine
for small models and for tests; use the numba backend for anything large.
This backend is the reference every other backend is tested against.
"""
from __future__ import annotations

import numpy as np

from ...errors import UnsupportedError
from ...quants import QTensor, dequantize, dequantize_raw
from ...tables import GGML_WRITABLE, parse_affine
from ..loader import WeightSource
from .base import CPUBackend


def dequantize_source(src: WeightSource) -> np.ndarray:
    """float32 (rows, cols) for a stored weight; F32 is a read-only view of the mmap."""
    rows, cols = src.shape
    if src.qtype == "F32":
        return src.data.view(np.float32).reshape(rows, cols)
    if src.index is not None:  # sparse (edgeslim/quants/sparse.py): kept values scattered, zeros elsewhere
        from ...quants.sparse import dequantize_raw as sparse_raw

        return sparse_raw(src.data, src.index, src.qtype, (rows, cols))
    aff = parse_affine(src.qtype)
    if aff:
        codes = src.data.view(np.uint32).reshape(rows, -1)
        return dequantize(QTensor(src.qtype, (rows, cols), codes, src.scales, src.biases))
    if src.qtype in GGML_WRITABLE:
        return dequantize_raw(src.data, src.qtype, (rows, cols))
    return _gguf_dequantize(src)


def _gguf_dequantize(src: WeightSource) -> np.ndarray:
    """Types edgeslim never writes but llama.cpp does (Q4_0, Q5_1, ...): gguf-py's numpy reference."""
    import gguf

    try:
        qt = gguf.GGMLQuantizationType[src.qtype]
        out = gguf.quants.dequantize(src.data.reshape(src.shape[0], -1), qt)
    except (KeyError, NotImplementedError, ValueError) as err:
        raise UnsupportedError(f"{src.name}: tensor type {src.qtype} is not supported ({err}); "
                               "re-quantize the model with edgeslim convert") from None
    return np.asarray(out, np.float32).reshape(src.shape)


class NumpyBackend(CPUBackend):
    """float32 weights, numpy matmuls: simple and exact, memory-hungry."""

    name = "numpy"

    def prepare(self, src: WeightSource) -> np.ndarray:
        return dequantize_source(src)  # (rows, cols) float32

    def matmul(self, w: np.ndarray, x: np.ndarray) -> np.ndarray:
        return x @ w.T  # (T, cols) @ (cols, rows) -> (T, rows)

    def embed(self, w: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return np.array(w[ids], dtype=np.float32)  # (T, D)
