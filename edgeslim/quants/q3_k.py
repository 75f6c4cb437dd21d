"""Q3_K: 256 weights per 110-byte super-block, ggml's block_q3_K.

    byte   0 ..  31   hmask[32]   high bit of each 3-bit code
    byte  32 ..  95   qs[64]      low 2 bits of each code (same placement as Q2_K)
    byte  96 .. 107   scales[12]  16 six-bit sub-block scales, stored as s[j] = q[j] + 32
    byte 108 .. 109   d (fp16)

    w[i] = d * q[i // 16] * (code[i] - 4),   code in [0, 7],  q in [-32, 31]

    hmask[l] bit k       = code[32k + l] >> 2                (k = 0..7, l = 0..31)
    qs: low2(code) as Q2_K's qs
    scales[j]     (j < 8) = low4(s[j]) | low4(s[j + 8]) << 4
    scales[8 + i] (i < 4) = hi2(s[i]) | hi2(s[i + 4]) << 2 | hi2(s[i + 8]) << 4 | hi2(s[i + 12]) << 6
"""
from __future__ import annotations

import numpy as np

from ..tables import QK_K, block_fields
from ._common import empty_blocks, fp16_bytes, fp16_from_bytes
from .q2_k import pack_2bit, unpack_2bit
from .search import from_elem_major, sym_quantize, to_elem_major

SUB = 16
_F = block_fields("Q3_K")  # byte ranges of hmask, qs, scales, d
# sub-block search grid: (code value of the sub-block's extreme weight, rounding-threshold shift);
# negative values use the extra code -4, positive ones put the extreme on +3
FACTORS = (tuple((-(4 + 0.25 * k), o) for k in range(-3, 4) for o in (-0.2, 0.0, 0.2))
           + tuple((3 + 0.25 * k, 0.0) for k in range(-1, 4)))


def encode(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """(B, 256) float32 [, weights] -> (B, 110) uint8."""
    S = QK_K // SUB
    xs, ws = to_elem_major(x, S), None if w is None else to_elem_major(w, S)
    d, q, L = sym_quantize(xs, ws, -4, 3, -32, 31, FACTORS)
    return pack(d, q, (from_elem_major(L) + 4).astype(np.uint8))


def pack(d: np.ndarray, q: np.ndarray, code: np.ndarray) -> np.ndarray:
    """d (B,) (stored as fp16), q (B, 16) int in [-32, 31], code (B, 256) in [0, 7] -> (B, 110) uint8."""
    B = code.shape[0]
    code = np.asarray(code).astype(np.uint8)
    s = (np.asarray(q) + 32).astype(np.uint8)
    out = empty_blocks("Q3_K", B)
    h = (code >> 2).reshape(B, 8, 32)
    out[:, _F["hmask"]] = np.bitwise_or.reduce(h << np.arange(8, dtype=np.uint8).reshape(1, 8, 1), axis=1)
    out[:, _F["qs"]] = pack_2bit(code & 3)
    hi = (s >> 4).reshape(B, 4, 4)  # [k, i] = hi2(s[4k + i])
    out[:, _F["scales"]] = np.concatenate([(s[:, :8] & 0xF) | ((s[:, 8:] & 0xF) << 4),
                                           hi[:, 0] | (hi[:, 1] << 2) | (hi[:, 2] << 4) | (hi[:, 3] << 6)], axis=1)
    out[:, _F["d"]] = fp16_bytes(d)
    return out


def unpack_params(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, 110) -> d (B,) float32, q (B, 16) int8 in [-32, 31]: the arguments of `pack` but the codes."""
    B = raw.shape[0]
    sb = raw[:, _F["scales"]]
    lo = np.concatenate([sb[:, :8] & 0xF, sb[:, :8] >> 4], axis=1)  # (B, 16)
    hi = (sb[:, None, 8:12] >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 4, 1)) & 3  # (B, 4, 4)
    q = (lo | (hi.reshape(B, 16) << 4)).astype(np.int8) - np.int8(32)
    return fp16_from_bytes(raw[:, _F["d"]])[:, 0], q


def decode(raw: np.ndarray) -> np.ndarray:
    """(B, 110) uint8 -> (B, 256) float32, computed as ggml does: (d * q) * (code - 4)."""
    B = raw.shape[0]
    d, q = unpack_params(raw)
    d = d[:, None]
    h = (raw[:, None, _F["hmask"]] >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1  # (B, 8, 32)
    code = unpack_2bit(raw[:, _F["qs"]]).astype(np.int8) + (h.reshape(B, QK_K) << 2).astype(np.int8) - np.int8(4)
    dl = (d * q.astype(np.float32))[:, :, None]
    return (dl * code.reshape(B, 16, SUB).astype(np.float32)).reshape(B, QK_K)
