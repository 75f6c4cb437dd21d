"""Key/value cache: preallocated to the context length, fp16 by default.

Layout per layer: keys transposed (Hkv, Hd, n_ctx) and values (Hkv, n_ctx, Hd),
so attention's two matmuls, q @ K^T and p @ V, read slices [..., :S] directly
as BLAS operands (numpy's batched matmul is many times slower on a transposed
view than on these layouts).
Storing fp16 halves memory (as llama.cpp's default cache does) and costs about
1e-3 relative error in logits; `kv_dtype="float32"` is exact.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError

KV_DTYPES = {"float16": np.float16, "f16": np.float16, "float32": np.float32, "f32": np.float32}


def kv_dtype_of(name) -> np.dtype:
    """'float16' | 'f16' | 'float32' | 'f32' (or a numpy dtype) -> numpy dtype."""
    if isinstance(name, str):
        if name.lower() not in KV_DTYPES:
            raise InputError(f"kv_dtype {name!r} is not supported; use float16 or float32")
        return np.dtype(KV_DTYPES[name.lower()])
    dt = np.dtype(name)
    if dt not in (np.float16, np.float32):
        raise InputError(f"kv_dtype {dt} is not supported; use float16 or float32")
    return dt


class CachePosition:
    """Position bookkeeping every backend's cache shares: `pos` filled of `n_ctx`."""

    pos: int = 0
    n_ctx: int = 0

    @property
    def free(self) -> int:
        """Positions left before the context is full."""
        return self.n_ctx - self.pos

    def advance(self, n: int) -> None:
        self.pos += n

    def truncate(self, n: int) -> None:
        """Forget positions n and later (keeps a shared prompt prefix for reuse)."""
        self.pos = max(0, min(int(n), self.pos))

    def reset(self) -> None:
        self.pos = 0


class KVCache(CachePosition):
    """Keys and values of the tokens seen so far; `pos` is how many positions are filled."""

    def __init__(self, n_layer: int, n_head_kv: int, head_dim: int, n_ctx: int, dtype="float16"):
        self.n_ctx = int(n_ctx)
        self.dtype = kv_dtype_of(dtype)
        self.k = np.zeros((n_layer, n_head_kv, head_dim, self.n_ctx), self.dtype)  # (L, Hkv, Hd, n_ctx)
        self.v = np.zeros((n_layer, n_head_kv, self.n_ctx, head_dim), self.dtype)  # (L, Hkv, n_ctx, Hd)
        self.pos = 0

    @property
    def k16(self) -> np.ndarray:
        """The fp16 keys as raw uint16 bits (a view, for numba code): (L, Hkv, Hd, n_ctx)."""
        return self.k.view(np.uint16)

    @property
    def v16(self) -> np.ndarray:
        """The fp16 values as raw uint16 bits (a view): (L, Hkv, n_ctx, Hd)."""
        return self.v.view(np.uint16)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def store(self, layer: int, k: np.ndarray, v: np.ndarray) -> None:
        """Write k, v: (T, Hkv, Hd) at positions pos..pos+T-1 of `layer` (pos advances in `advance`)."""
        T = k.shape[0]
        if self.pos + T > self.n_ctx:
            raise InputError(f"{self.pos + T} tokens exceed the context of {self.n_ctx}; pass a larger --ctx / n_ctx")
        self.k[layer, :, :, self.pos:self.pos + T] = k.transpose(1, 2, 0)
        self.v[layer, :, self.pos:self.pos + T] = v.transpose(1, 0, 2)

    def view(self, layer: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """float32 keys transposed (Hkv, Hd, length) and values (Hkv, length, Hd) of positions 0..length-1."""
        k = self.k[layer, :, :, :length]
        v = self.v[layer, :, :length]
        if self.dtype != np.float32:
            k, v = k.astype(np.float32), v.astype(np.float32)
        return k, v

