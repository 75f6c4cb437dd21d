"""IQ4_NL and IQ4_XS: 4-bit codes into a non-uniform 16-value table, ggml's block_iq4_nl / block_iq4_xs.

    KVALUES: (16,) int8 = -127 -104 -83 -65 -49 -35 -22 -10 1 13 25 38 53 69 89 113   (from gguf-py)

IQ4_NL, 32 weights in 18 bytes:           IQ4_XS, 256 weights in 136 bytes:
    byte 0..1   d (fp16)                      byte   0 ..   1  d (fp16)
    byte 2..17  qs[16]                        byte   2 ..   3  scales_h (uint16 LE)
                                              byte   4 ..   7  scales_l[4]
    w[i] = d * KVALUES[code[i]]               byte   8 .. 135  qs[128]

                                              w[i] = d * (ls[i // 32] - 32) * KVALUES[code[i]]
                                              ls[j] = low4 | hi2 << 4, 6 bits, j = 0..7:
                                                low4(ls[j]) = scales_l[j // 2] >> 4 * (j % 2)
                                                hi2(ls[j])  = scales_h >> 2 * j

Codes of each 32 weights: qs[16 i + l] = code[32 i + l] | code[32 i + 16 + l] << 4 (as Q4_0,
`legacy.pack_nibbles`).

The scale search is `search.py`'s symmetric one with the table as the rounding
grid (nearest table value instead of nearest integer): candidate scales put
the block's extreme weight on or near the table's ends (-127 or 113), each
candidate's codes get the weighted least-squares scale, Lloyd steps follow;
IQ4_NL then refines its fp16 scale, IQ4_XS picks the fp16 super-scale and the
6-bit sub-scales on per-sub-block statistics as the k-quants do.

Throughput, million weights per CPU-second on one core of this 2-core machine while busy
(`python scripts/compare_quantizers.py --rows 256 --cols 4096 --no-mlx`, column "ours Mw/s",
normal / student-t / stories260K weights; GPTQ: `... --gptq --rows 1536 --cols 768`):
IQ4_NL 11-13, IQ4_XS 10-14; GPTQ 4.1 / 3.2.  Weighted error vs llama.cpp: 0.92-0.97x.
"""
from __future__ import annotations

import gguf
import numpy as np

from ..tables import QK_K, block_fields
from ._common import empty_blocks, f16, fp16_bytes, fp16_from_bytes
from .legacy import pack_nibbles, unpack_nibbles
from .search import from_elem_major, sym_quantize, sym_refine_f16, sym_subblock_fit, to_elem_major

KVALUES = np.array(gguf.quants.IQ4_NL.kvalues, np.int8)  # (16,) ascending
_KF = KVALUES.astype(np.float32)
_MID = ((_KF[1:] + _KF[:-1]) / 2).astype(np.float32)  # (15,) decision thresholds, all multiples of 0.5
# nearest entry by table look-up on half-unit bins (every threshold is a bin edge): ~10x np.searchsorted
_LUT_HALF = 300  # bins cover [-150, 150)
_LUT_IDX = np.searchsorted(_MID, np.arange(-_LUT_HALF, _LUT_HALF) / 2 + 0.25).astype(np.uint8)  # (600,)
_LUT_VAL = _KF[_LUT_IDX]
BLOCK = 32
SUB = 32
_NL, _XS = block_fields("IQ4_NL"), block_fields("IQ4_XS")  # byte ranges of each block's fields
# scale candidates: (table value the block's extreme weight maps to, rounding-threshold shift)
FACTORS = (tuple((-127.0 + 3 * k, o) for k in range(-3, 4) for o in (-2.0, 0.0, 2.0))
           + tuple((113.0 + 3 * k, 0.0) for k in range(-2, 3)))
N_REFINE = 3


def _bins(v: np.ndarray) -> np.ndarray:
    b = np.multiply(v, 2, dtype=np.float32)
    b += _LUT_HALF
    np.clip(b, 0, 2 * _LUT_HALF - 1, out=b)
    return b.astype(np.intp)


def nearest(v: np.ndarray) -> np.ndarray:
    """Scaled weights -> the nearest KVALUES entry (float32, same shape)."""
    return _LUT_VAL[_bins(v)]


def index_of(v: np.ndarray) -> np.ndarray:
    """Scaled weights (or KVALUES entries) -> the 4-bit code of the nearest entry (uint8)."""
    return _LUT_IDX[_bins(v)]


# ---------------------------------------------------------------------------
# IQ4_NL
# ---------------------------------------------------------------------------
def encode_nl(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """(B, 32) float32 [, weights (B, 32)] -> (B, 18) uint8."""
    xs = np.ascontiguousarray(x.T)  # (32, B) element-major
    ws = None if w is None else np.ascontiguousarray(w.T)
    s = sym_subblock_fit(xs, ws, -127, 113, FACTORS, rounder=nearest)
    d, q = sym_refine_f16(x, w, f16(s), nearest, N_REFINE)
    return pack_nl(d, index_of(q))


def pack_nl(d: np.ndarray, code: np.ndarray) -> np.ndarray:
    """d (B,) (stored as fp16), code (B, 32) in [0, 15] -> (B, 18) uint8."""
    out = empty_blocks("IQ4_NL", code.shape[0])
    out[:, _NL["d"]] = fp16_bytes(d)
    out[:, _NL["qs"]] = pack_nibbles(code)
    return out


def unpack_params_nl(raw: np.ndarray) -> np.ndarray:
    """(B, 18) -> d (B,) float32."""
    return fp16_from_bytes(raw[:, _NL["d"]])[:, 0]


def decode_nl(raw: np.ndarray) -> np.ndarray:
    """(B, 18) uint8 -> (B, 32) float32, as gguf-py computes it: d * KVALUES[code]."""
    return fp16_from_bytes(raw[:, _NL["d"]]) * _KF[unpack_nibbles(raw[:, _NL["qs"]])]


# ---------------------------------------------------------------------------
# IQ4_XS
# ---------------------------------------------------------------------------
def encode_xs(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """(B, 256) float32 [, weights (B, 256)] -> (B, 136) uint8."""
    S = QK_K // SUB
    xs, ws = to_elem_major(x, S), None if w is None else to_elem_major(w, S)
    d, q, L = sym_quantize(xs, ws, -127, 113, -32, 31, FACTORS, rounder=nearest)
    return pack_xs(d, q, index_of(from_elem_major(L.astype(np.float32))))


def pack_xs(d: np.ndarray, q: np.ndarray, code: np.ndarray) -> np.ndarray:
    """d (B,) (stored as fp16), q (B, 8) sub-scales in [-32, 31], code (B, 256) in [0, 15] -> (B, 136) uint8."""
    ls = (np.asarray(q) + 32).astype(np.uint16)  # (B, 8) six bits
    out = empty_blocks("IQ4_XS", ls.shape[0])
    out[:, _XS["d"]] = fp16_bytes(d)
    h = np.bitwise_or.reduce((ls >> 4) << (2 * np.arange(8, dtype=np.uint16)), axis=1).astype("<u2")
    out[:, _XS["scales_h"]] = h.view(np.uint8).reshape(-1, 2)
    lo = (ls & 0xF).astype(np.uint8)
    out[:, _XS["scales_l"]] = lo[:, 0::2] | (lo[:, 1::2] << 4)
    out[:, _XS["qs"]] = pack_nibbles(code)
    return out


def unpack_params_xs(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, 136) -> d (B,) float32, q (B, 8) int8 sub-scales in [-32, 31]."""
    h = np.ascontiguousarray(raw[:, _XS["scales_h"]]).view("<u2")  # (B, 1)
    hi = ((h >> (2 * np.arange(8, dtype=np.uint16))) & 3).astype(np.uint8)  # (B, 8)
    lo = (raw[:, _XS["scales_l"], None] >> np.array([0, 4], np.uint8)).reshape(-1, 8) & 0xF
    return fp16_from_bytes(raw[:, _XS["d"]])[:, 0], (lo | (hi << 4)).astype(np.int8) - np.int8(32)


def decode_xs(raw: np.ndarray) -> np.ndarray:
    """(B, 136) uint8 -> (B, 256) float32, as gguf-py computes it: (d * q) * KVALUES[code]."""
    d, q = unpack_params_xs(raw)
    dl = (d[:, None] * q.astype(np.float32))[:, :, None]  # (B, 8, 1)
    vals = _KF[unpack_nibbles(raw[:, _XS["qs"]])].reshape(-1, 8, SUB)
    return (dl * vals).reshape(-1, QK_K)
