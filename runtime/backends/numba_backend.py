"""The CPU backend for real use: packed quantized weights and numba kernels.

Each weight is handed to `edgeslim.runtime.kernels.prepare`, which returns the
kernel's packed form; `kernels.linear` multiplies activations by it directly,
so decoding never dequantizes a whole matrix, and embedding lookups
dequantize only the rows asked for (`kernels.embed_rows`). The rest of the
forward (norms, RoPE, attention) is the shared numpy code in `CPUBackend`.

Memory: once every weight is packed, the mapped file pages are released with
madvise(MADV_DONTNEED) so that the packed copy is what stays resident (pages
the packed form still references are simply faulted back in from the page
cache).
"""
from __future__ import annotations

import os
import warnings

import numpy as np

# numba's default threading layer here is GNU OpenMP, whose workers spin at every
# barrier. When the CPU is shared with anything else, a spinning worker that loses its
# core stalls each parallel region: measured on a busy 2-core machine, 250 ms/token on a
# tiny model and 84 ms on a 75M-parameter Q4_K one, against 1.8 and 36 ms with passive
# waiting. So the runtime asks for passive waiting unless the user chose a policy. This
# must be set before the first parallel kernel runs (libgomp reads it at start-up).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ...errors import UnsupportedError  # noqa: E402
from .. import kernels  # noqa: E402
from ..loader import ModelFile, WeightSource  # noqa: E402
from .base import CPUBackend  # noqa: E402
from .numpy_backend import dequantize_source  # noqa: E402


class NumbaBackend(CPUBackend):
    """Packed weights, numba matmul/dequant kernels, numpy attention."""

    name = "numba"

    def __init__(self, model: ModelFile, kv_dtype="float16"):
        self.fallback_types: set[str] = set()
        super().__init__(model, kv_dtype)
        self.model.gguf.drop_pages()

    def prepare(self, src: WeightSource):
        try:
            return kernels.prepare(src.qtype, src.data, src.shape, scales=src.scales, biases=src.biases)
        except UnsupportedError:
            # a type with no kernel (llama.cpp's Q4_0, Q5_1, ...): run it as F32, once per type warned
            if src.qtype not in self.fallback_types:
                self.fallback_types.add(src.qtype)
                warnings.warn(f"{self.model.path}: no numba kernel for {src.qtype}; those weights run as float32 "
                              "(more memory, slower); re-quantize with edgeslim convert for speed", stacklevel=4)
            w = np.ascontiguousarray(dequantize_source(src), dtype=np.float32)  # (rows, cols)
            return kernels.prepare("F32", w.reshape(-1).view(np.uint8), src.shape)

    def matmul(self, w, x: np.ndarray) -> np.ndarray:
        return kernels.linear(w, np.ascontiguousarray(x, dtype=np.float32))  # (T, rows)

    def embed(self, w, ids: np.ndarray) -> np.ndarray:
        return np.asarray(kernels.embed_rows(w, ids), dtype=np.float32)  # (T, D)

