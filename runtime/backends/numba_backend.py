"""The CPU backend for real use: packed quantized weights and numba kernels.

Each weight is handed to `edgeslim.runtime.kernels.prepare`, which returns the
kernel's packed form; `kernels.linear` multiplies activations by it directly,
so decoding never dequantizes a whole matrix, and embedding lookups
dequantize only the rows asked for (`kernels.embed_rows`).

Per block, the projections that share a type are fused at load: q|k|v into one
packed matrix and gate|up into another (`kernels.concat_rows`), so a decode step
quantizes each activation once and runs four parallel regions instead of seven.
RMSNorm, SwiGLU and (with the default fp16 cache, up to ATTN_T_MAX tokens per
call) RoPE + cache store + attention run as numba functions (`cpu_ops`); longer
prompts take `CPUBackend`'s RoPE and cache store (the same fp16 bits in the same
cache) and `cpu_ops.attention_f32`, parallel over kv heads and query blocks.

Memory: each weight's mapped pages are released with madvise(MADV_DONTNEED)
right after it is packed, so the file and the packed copy are never both
resident (pages the packed form still references are simply faulted back in
from the page cache).  Every ggml type runs natively; nothing is expanded to
float32.
"""
from __future__ import annotations

import os

import numpy as np

# numba's default threading layer here is GNU OpenMP, whose workers spin at every
# barrier. When the CPU is shared with anything else, a spinning worker that loses its
# core stalls each parallel region: measured on a busy 2-core machine, 250 ms/token on a
# tiny model and 84 ms on a 75M-parameter Q4_K one, against 1.8 and 36 ms with passive
# waiting. So the runtime asks for passive waiting unless the user chose a policy, with a
# short spin first (GOMP_SPINCOUNT, ~10 us): a decode step's regions follow each other
# within microseconds, and the short spin catches most of them (measured on the 94M bench
# model, 2 threads, idle machine: 133-147 tok/s with no spin, 165-175 with 10000, 159-164
# fully ACTIVE). These must be set before the first parallel kernel runs (libgomp reads
# them at start-up).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import sys  # noqa: E402


def _import_numba_arraymath_without_scipy() -> None:
    """Import numba's array-math registry without letting it import scipy.linalg.

    numba imports `scipy.linalg.cython_blas` when this module loads (0.4 s of a ~2 s
    start-up where scipy is installed) only to pick the inner loop of np.convolve /
    np.correlate; np.dot and np.linalg check for scipy again when they compile, so they
    are unaffected. The runtime uses none of them. Nothing changes when scipy.linalg is
    already imported.
    """
    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules:
        return
    sys.modules["scipy.linalg"] = None  # makes `import scipy.linalg...` raise ImportError at once
    try:
        import numba.np.arraymath  # noqa: F401
    finally:
        del sys.modules["scipy.linalg"]


_import_numba_arraymath_without_scipy()

from ...errors import UnsupportedError  # noqa: E402
from .. import cpu_ops, kernels  # noqa: E402
from ..loader import ModelFile, WeightSource  # noqa: E402
from .base import CPUBackend  # noqa: E402

# Up to this many tokens per forward call attention runs in `cpu_ops.attend_f16` (on the
# fp16 cache's bits); beyond it the cache is read once as float32 (`KVCache.window_view`)
# and `cpu_ops.attention_f32` runs the prompt's queries in parallel.
ATTN_T_MAX = 16
QKV, QKV_BIAS, GATE_UP = "attn_qkv", "attn_qkv_bias", "ffn_gate_up"
HALVES = {"silu": cpu_ops.swiglu_halves, "gelu_tanh": cpu_ops.geglu_halves}  # family activation -> fused FFN


class NumbaBackend(CPUBackend):
    """Packed weights, numba matmul/dequant kernels, fused decode steps."""

    name = "numba"

    def __init__(self, model: ModelFile, kv_dtype="float16"):
        super().__init__(model, kv_dtype)
        self.model.gguf.drop_pages()

    def prepare(self, src: WeightSource):
        """The weight packed for the kernels; its mapped pages are released at once, so the file and
        its packed copy are never both resident (peak RSS stays near one copy of the weights)."""
        try:
            packed = kernels.prepare(src.qtype, src.data, src.shape, scales=src.scales, biases=src.biases,
                                     index=src.index)
        except UnsupportedError as err:
            raise UnsupportedError(f"{self.model.path}: {src.name}: {err}") from None
        self.model.release(src)
        return packed

    def _load_block(self, bid: int) -> dict:
        layer = super()._load_block(bid)
        for fused, roles in self.model.arch.FUSED.items():  # the family says what stacks (QKV, GATE_UP)
            packed = kernels.concat_rows([layer[r] for r in roles])
            if packed is not None:  # same type: one matrix; the parts are dropped
                layer[fused] = packed
                for r in roles:
                    del layer[r]
        if QKV in layer and "attn_q_bias" in layer:  # the fused projection's bias, in the same order
            layer[QKV_BIAS] = np.concatenate([layer[f"attn_{r}_bias"] for r in "qkv"]).astype(np.float32)
        return layer

    # -- the block steps (see CPUBackend._block) ---------------------------------------
    def norm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return cpu_ops.rms_norm(np.ascontiguousarray(x, dtype=np.float32), weight, self.hp.rms_eps)

    def project_qkv(self, w: dict, h: np.ndarray) -> np.ndarray:
        """q | k | v as one (T, (H + 2*Hkv)*Hd) array."""
        if QKV not in w:
            return np.concatenate(super().project_qkv(w, h), axis=1)
        qkv = self.matmul(w[QKV], h)
        if QKV_BIAS in w:
            qkv += w[QKV_BIAS]
        if "attn_q_norm" in w:
            hp = self.hp
            cpu_ops.head_norms(qkv, hp.n_head, hp.n_head_kv, hp.head_dim, w["attn_q_norm"], w["attn_k_norm"],
                               hp.rms_eps)
        return qkv

    def attend(self, bid: int, qkv: np.ndarray, cache, start: int) -> np.ndarray:
        hp = self.hp
        if qkv.shape[0] > ATTN_T_MAX or cache.dtype != np.float16:
            return super().attend(bid, np.split(qkv, self.qkv_cuts(), axis=1), cache, start)
        rope = self.rope_for(bid)
        return cpu_ops.attend_f16(qkv, hp.n_head, rope.cos, rope.sin, self.model.arch.rope_neox,
                                  cache.k16[bid], cache.v16[bid], start, hp.scale, hp.window(bid), cache.ring(bid))

    def attention(self, q, kt, v, start: int, scale, window: int, kpos0: int) -> np.ndarray:
        return cpu_ops.attention_f32(q, kt, v, start, scale, window, kpos0)  # (T, H*Hd)

    def ffn_act(self, w: dict, h: np.ndarray) -> np.ndarray:
        fused = GATE_UP if GATE_UP in w else "ffn_up" if "ffn_gate" not in w else None  # (Phi-3 stores it fused)
        if fused is None:
            return super().ffn_act(w, h)
        return HALVES[self.model.arch.activation](self.matmul(w[fused], h))  # (T, 2F) -> (T, F)

    def matmul(self, w, x: np.ndarray) -> np.ndarray:
        return kernels.linear(w, np.ascontiguousarray(x, dtype=np.float32))  # (T, rows)

    def embed(self, w, ids: np.ndarray) -> np.ndarray:
        return np.asarray(kernels.embed_rows(w, ids), dtype=np.float32)  # (T, D)

