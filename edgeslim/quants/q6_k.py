"""Q6_K: 256 weights per 210-byte super-block, ggml's block_q6_K.

    byte    0 ........ 127   ql[128]   low 4 bits of each code
    byte  128 ........ 191   qh[64]    high 2 bits of each code
    byte  192 ........ 207   scales[16] int8, one per sub-block of 16 weights
    byte  208 ........ 209   d (fp16)

    w[i] = d * scales[i // 16] * (code[i] - 32),   code in [0, 63]

Code placement, for half h in {0, 1} (weights 128h .. 128h+127), lane l in 0..31:

    ql[64h + l]      = low4(code[128h + l])      | low4(code[128h + 64 + l]) << 4
    ql[64h + 32 + l] = low4(code[128h + 32 + l]) | low4(code[128h + 96 + l]) << 4
    qh[32h + l]      = hi2(code[128h + l])       | hi2(code[128h + 32 + l]) << 2
                     | hi2(code[128h + 64 + l]) << 4 | hi2(code[128h + 96 + l]) << 6
"""
from __future__ import annotations

import numpy as np

from ..tables import QK_K, block_fields
from ._common import empty_blocks, fp16_bytes, fp16_from_bytes
from .search import from_elem_major, sym_quantize, to_elem_major

SUB = 16
_F = block_fields("Q6_K")  # byte ranges of ql, qh, scales, d
# sub-block search grid: (code value of the sub-block's extreme weight, rounding-threshold shift);
# negative values use the extra code -32, positive ones put the extreme on +31
FACTORS = (tuple((-(32 + 0.2 * k), o) for k in range(-4, 5) for o in (-0.2, 0.0, 0.2))
           + tuple((31 + 0.4 * k, 0.0) for k in range(-2, 3)))


def encode(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """(B, 256) float32 [, weights] -> (B, 210) uint8."""
    S = QK_K // SUB
    xs, ws = to_elem_major(x, S), None if w is None else to_elem_major(w, S)
    d, q, L = sym_quantize(xs, ws, -32, 31, -128, 127, FACTORS)
    return pack(d, q, (from_elem_major(L) + 32).astype(np.uint8))


def pack(d: np.ndarray, q: np.ndarray, code: np.ndarray) -> np.ndarray:
    """d (B,), q (B, 16) int in [-128, 127], code (B, 256) uint8 in [0, 63] -> (B, 210) uint8."""
    B = code.shape[0]
    c = code.reshape(B, 2, 4, 32)  # [half, quarter k, lane l] = code[128h + 32k + l]
    lo, hi = c & 0xF, c >> 4
    out = empty_blocks("Q6_K", B)
    ql = np.stack([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2)  # (B, 2, 2, 32)
    out[:, _F["ql"]] = ql.reshape(B, 128)
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)  # (B, 2, 32)
    out[:, _F["qh"]] = qh.reshape(B, 64)
    out[:, _F["scales"]] = q.astype(np.int8).view(np.uint8)
    out[:, _F["d"]] = fp16_bytes(d)
    return out


def unpack_params(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, 210) -> d (B,) float32, q (B, 16) int8: the arguments of `pack` but the codes."""
    return fp16_from_bytes(raw[:, _F["d"]])[:, 0], raw[:, _F["scales"]].view(np.int8)


def unpack(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, 210) -> d (B, 1) float32, scales (B, 16) float32, codes (B, 256) int in [-32, 31]."""
    B = raw.shape[0]
    ql = raw[:, _F["ql"]].reshape(B, 2, 2, 32)
    qh = raw[:, _F["qh"]].reshape(B, 2, 1, 32)
    lo = np.stack([ql[:, :, 0] & 0xF, ql[:, :, 1] & 0xF, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
    hi = (qh >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3
    code = (lo | (hi << 4)).astype(np.int8) - np.int8(32)
    scales = raw[:, _F["scales"]].view(np.int8).astype(np.float32)
    return fp16_from_bytes(raw[:, _F["d"]]), scales, code.reshape(B, QK_K)


def decode(raw: np.ndarray) -> np.ndarray:
    """(B, 210) uint8 -> (B, 256) float32, computed as ggml does: (d * scale) * code."""
    d, scales, code = unpack(raw)
    B = raw.shape[0]
    return ((d * scales)[:, :, None] * code.reshape(B, 16, SUB).astype(np.float32)).reshape(B, QK_K)
