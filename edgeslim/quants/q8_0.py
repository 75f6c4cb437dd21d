"""Q8_0: 32 weights per 34-byte block, byte-identical to ggml's quantize_row_q8_0_ref.

    byte   0      1      2      3           33
         +------+------+------+------+ ... +------+
         |  d (fp16)   | q[0] | q[1] |     | q[31]|     q[i]: int8
         +------+------+------+------+ ... +------+

    w[i] = d * q[i]

ggml's rule (no importance): d = amax/127 in float32, q = roundf(x * (1/d)),
and d is stored rounded to fp16.  With an importance vector ggml ignores it; we
start from ggml's codes and keep a weighted least-squares refit of d (and the
codes re-rounded to it) only where it lowers the importance-weighted error, so
the result is never worse than ggml's under that weighting.
"""
from __future__ import annotations

import numpy as np

from ..tables import block_fields
from ._common import empty_blocks, f16, fp16_bytes, fp16_from_bytes, round_away, safe_div
from .search import rint_clip, sym_refine_f16

BLOCK = 32
_F = block_fields("Q8_0")  # byte ranges of d, qs


def _ggml_codes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, 32) -> d (B,) float32 unrounded, q (B, 32) float32 integral: ggml's reference rule."""
    d = np.abs(x).max(axis=1) / np.float32(127)
    inv = safe_div(np.float32(1), d).astype(np.float32)
    return d, round_away(x * inv[:, None])


def encode(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """(B, 32) float32 [, weights (B, 32)] -> (B, 34) uint8."""
    d, q = _ggml_codes(x)
    if w is not None:
        d, q = _refine(x, w, f16(d), q)
    return pack(d, q)


def pack(d: np.ndarray, q: np.ndarray) -> np.ndarray:
    """d (B,) (stored as fp16), q (B, 32) integral in [-128, 127] -> (B, 34) uint8."""
    out = empty_blocks("Q8_0", q.shape[0])
    out[:, _F["d"]] = fp16_bytes(d)
    out[:, _F["qs"]] = q.astype(np.int8).view(np.uint8)
    return out


def unpack_params(raw: np.ndarray) -> np.ndarray:
    """(B, 34) -> d (B,) float32: the block scale; w = d * q with q int8."""
    return fp16_from_bytes(raw[:, _F["d"]])[:, 0]


def _refine(x, w, d, q):
    """Weighted Lloyd steps (refit d, re-round q); keep per block whatever lowers the weighted error."""
    return sym_refine_f16(x, w, d, lambda v: rint_clip(v, -128, 127), q=q)


def decode(raw: np.ndarray) -> np.ndarray:
    """(B, 34) uint8 -> (B, 32) float32, as ggml/gguf-py compute it (q * d in float32)."""
    d = fp16_from_bytes(raw[:, _F["d"]])
    return raw[:, _F["qs"]].view(np.int8).astype(np.float32) * d
