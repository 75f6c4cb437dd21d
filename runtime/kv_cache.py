"""Key/value cache: preallocated to the context length, fp16 by default.

Layout per layer: keys transposed (Hkv, Hd, n_ctx) and values (Hkv, n_ctx, Hd) (a
sliding-window layer keeps a ring of its window instead, see `KVCache`),
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


RING_SLACK = 64  # extra ring slots past the window: room for a decode batch and a short truncate


class KVCache(CachePosition):
    """Keys and values of the tokens seen so far; `pos` is how many positions are filled.

    windows: per layer, 0 (the layer sees every position: n_ctx slots) or its sliding
    window W: the layer then keeps a ring of min(n_ctx, W + RING_SLACK) slots, position p
    in slot p % cap (a Gemma-3 local layer with W = 512 holds 576 positions, not n_ctx).
    `truncate(n)` on a ring keeps only what is still there (else it falls back to 0).
    """

    def __init__(self, n_layer: int, n_head_kv: int, head_dim: int, n_ctx: int, dtype="float16",
                 windows: tuple[int, ...] | None = None):
        self.n_ctx = int(n_ctx)
        self.dtype = kv_dtype_of(dtype)
        self.windows = tuple(windows or (0,) * n_layer)
        self.caps = [self.n_ctx if not w else min(self.n_ctx, w + RING_SLACK) for w in self.windows]
        self.k = [np.zeros((n_head_kv, head_dim, c), self.dtype) for c in self.caps]  # per layer (Hkv, Hd, cap)
        self.v = [np.zeros((n_head_kv, c, head_dim), self.dtype) for c in self.caps]  # per layer (Hkv, cap, Hd)
        self.k16 = [k.view(np.uint16) for k in self.k]  # the fp16 bits (views, for numba code)
        self.v16 = [v.view(np.uint16) for v in self.v]
        self.pos = 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k + self.v)

    def ring(self, layer: int) -> int:
        """The ring size of `layer` when it wraps (cap < n_ctx), else 0 (slot = position)."""
        return self.caps[layer] if self.caps[layer] < self.n_ctx else 0

    def truncate(self, n: int) -> None:
        """Forget positions n and later; a ring layer that no longer holds its window before n
        forces a full reset (the caller then re-runs the prompt)."""
        n = max(0, min(int(n), self.pos))
        for w, cap in zip(self.windows, self.caps):
            if w and cap < self.n_ctx and self.pos - n > cap - w + 1:
                n = 0
        self.pos = n

    def store(self, layer: int, k: np.ndarray, v: np.ndarray) -> None:
        """Write k, v: (T, Hkv, Hd) at positions pos..pos+T-1 of `layer` (pos advances in `advance`)."""
        T = k.shape[0]
        if self.pos + T > self.n_ctx:
            raise InputError(f"{self.pos + T} tokens exceed the context of {self.n_ctx}; pass a larger --ctx / n_ctx")
        cap = self.caps[layer]
        first = max(self.pos, self.pos + T - cap)  # a ring keeps only the last cap positions
        slots = np.arange(first, self.pos + T) % cap
        self.k[layer][:, :, slots] = k[first - self.pos:].transpose(1, 2, 0)
        self.v[layer][:, slots] = v[first - self.pos:].transpose(1, 0, 2)

    def view(self, layer: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """float32 keys transposed (Hkv, Hd, length) and values (Hkv, length, Hd) of positions 0..length-1
        (a layer without a ring)."""
        k = self.k[layer][:, :, :length]
        v = self.v[layer][:, :length]
        if self.dtype != np.float32:
            k, v = k.astype(np.float32), v.astype(np.float32)
        return k, v

    def window_view(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Store k, v (T, Hkv, Hd) at pos.. and return what attention over them needs:
        float32 keys (Hkv, Hd, S), values (Hkv, S, Hd) and the position of key 0.

        A layer without a ring returns positions 0..pos+T-1. A ring layer returns the
        positions it held before this call, oldest first, then the new ones (read before
        the new ones overwrite slots that earlier queries of this batch still see)."""
        start, T = self.pos, k.shape[0]
        if not self.ring(layer):
            self.store(layer, k, v)
            kt, vv = self.view(layer, start + T)
            return kt, vv, 0
        cap = self.caps[layer]
        lo = max(0, start - cap)
        old = np.arange(lo, start) % cap
        kt = np.concatenate([self.k[layer][:, :, old], k.astype(self.dtype).transpose(1, 2, 0)], axis=2)
        vv = np.concatenate([self.v[layer][:, old], v.astype(self.dtype).transpose(1, 0, 2)], axis=1)
        self.store(layer, k, v)
        return kt.astype(np.float32), vv.astype(np.float32), lo
