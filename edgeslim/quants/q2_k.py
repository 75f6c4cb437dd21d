"""Q2_K: 256 weights per 84-byte super-block, ggml's block_q2_K.

    byte   0 ..  15   scales[16]  sub-block j (16 weights): low nibble = sc[j], high nibble = m[j]
    byte  16 ..  79   qs[64]      2-bit codes
    byte  80 ..  81   d    (fp16)
    byte  82 ..  83   dmin (fp16)

    w[i] = d * sc[i // 16] * code[i] - dmin * m[i // 16],   code in [0, 3]

Code placement, for half h in {0, 1} (weights 128h .. 128h+127), lane l in 0..31:

    qs[32h + l] = code[128h + l] | code[128h + 32 + l] << 2
                | code[128h + 64 + l] << 4 | code[128h + 96 + l] << 6
"""
from __future__ import annotations

import numpy as np

from ..tables import QK_K, block_fields
from ._common import empty_blocks, fp16_bytes, fp16_from_bytes
from .search import asym_quantize, from_elem_major, to_elem_major

SUB = 16
_F = block_fields("Q2_K")  # byte ranges of scales, qs, d, dmin
# sub-block search grid: (code value of the sub-block's range, rounding offset), see q4_k.py
FACTORS = tuple((2.2 + 0.25 * k, o) for k in range(7) for o in (-0.3, 0.0, 0.3))


def pack_2bit(code: np.ndarray) -> np.ndarray:
    """(B, 256) codes in [0, 3] -> (B, 64) bytes in the layout drawn above (shared with Q3_K)."""
    c = code.reshape(-1, 2, 4, 32).astype(np.uint8)
    return (c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)).reshape(-1, 64)


def unpack_2bit(qs: np.ndarray) -> np.ndarray:
    """(B, 64) -> (B, 256) codes in [0, 3]."""
    q = qs.reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    return (q & 3).reshape(-1, QK_K)


def encode(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """(B, 256) float32 [, weights] -> (B, 84) uint8."""
    B, S = x.shape[0], QK_K // SUB
    xs, ws = to_elem_major(x, S), None if w is None else to_elem_major(w, S)
    d, dmin, sc, m, L = asym_quantize(xs, ws, 3, 15, FACTORS)
    return pack(d, dmin, sc, m, from_elem_major(L))


def pack(d: np.ndarray, dmin: np.ndarray, sc: np.ndarray, m: np.ndarray, code: np.ndarray) -> np.ndarray:
    """d, dmin (B,) (stored as fp16), sc, m (B, 16) in [0, 15], code (B, 256) in [0, 3] -> (B, 84) uint8."""
    out = empty_blocks("Q2_K", code.shape[0])
    out[:, _F["scales"]] = (np.asarray(sc).astype(np.uint8) | (np.asarray(m).astype(np.uint8) << 4))
    out[:, _F["qs"]] = pack_2bit(code)
    out[:, _F["d"]] = fp16_bytes(d)
    out[:, _F["dmin"]] = fp16_bytes(dmin)
    return out


def unpack_params(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(B, 84) -> d, dmin (B,) float32, sc, m (B, 16) uint8: the arguments of `pack` but the codes."""
    sc = raw[:, _F["scales"]]
    return fp16_from_bytes(raw[:, _F["d"]])[:, 0], fp16_from_bytes(raw[:, _F["dmin"]])[:, 0], sc & 0xF, sc >> 4


def decode(raw: np.ndarray) -> np.ndarray:
    """(B, 84) uint8 -> (B, 256) float32, computed as ggml does: (d*sc) * code - dmin*m."""
    B = raw.shape[0]
    d, dmin = fp16_from_bytes(raw[:, _F["d"]]), fp16_from_bytes(raw[:, _F["dmin"]])
    sc = raw[:, _F["scales"]]
    dl = (d * (sc & 0xF).astype(np.float32))[:, :, None]
    ml = (dmin * (sc >> 4).astype(np.float32))[:, :, None]
    code = unpack_2bit(raw[:, _F["qs"]]).reshape(B, 16, SUB).astype(np.float32)
    return (dl * code - ml).reshape(B, QK_K)
