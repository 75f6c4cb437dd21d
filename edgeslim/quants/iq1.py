"""IQ1_S and IQ1_M: 1.5-1.75 bpw ternary lattice codes, 256 weights per super-block (ggml's block_iq1_s / _m).

Each 8 weights are one point of an 8-dimensional grid with values {-1, 0, 1}
(signs included), shifted by a small delta of either sign:

    w[i] = d * (2 l + 1) * (GRID[idx[i // 8], i % 8] + delta),   delta = +-0.125

    GRID: (2048, 8) int8 in {-1, 0, 1}       (from gguf-py)
    DELTA = 0.125

The search is `lattice.py`'s with the delta folded into the points searched
([GRID + DELTA; GRID - DELTA]); IQ1_S keeps one delta sign per sub-block.

Throughput, million weights per CPU-second on one core of this 2-core machine while busy
(`python scripts/compare_quantizers.py --rows 256 --cols 4096 --no-mlx`, column "ours Mw/s",
normal / student-t / stories260K weights; GPTQ: `... --gptq --rows 1536 --cols 768`):
IQ1_S / IQ1_M 0.2-0.25 (4096 points searched per group); vector GPTQ 0.2.
Weighted error vs llama.cpp (imatrix): IQ1_S 0.88-0.93x, IQ1_M 0.89-0.94x.

IQ1_S, 50 bytes (1.56 bpw): one l (3 bits) and one delta sign per 32 weights
    byte  0 ..  1   d (fp16)
    byte  2 .. 33   qs[32]       low 8 bits of idx of group g
    byte 34 .. 49   qh[8] uint16 LE, sub-block j: bits 3k..3k+2 = idx bits 8..10 of group 4j + k,
                                 bits 12..14 = l[j], bit 15 = delta of sub-block j is negative

IQ1_M, 56 bytes (1.75 bpw): one l (3 bits) per 16 weights, one delta sign per 8 weights
    byte  0 .. 31   qs[32]       low 8 bits of idx of group g
    byte 32 .. 47   qh[16]       nibble h of qh[m] (h = 0, 1) for group 2m + h:
                                 bits 0..2 = idx bits 8..10, bit 3 = delta negative
    byte 48 .. 55   sc[4] uint16 LE: bits 3k..3k+2 of sc[m] = l[4m + k] (k = 0..3),
                                 bits 12..15 of sc[0..3] = bits 0..3, 4..7, 8..11, 12..15 of d (fp16)
"""
from __future__ import annotations

import gguf
import numpy as np

from ..tables import QK_K, block_fields
from ._common import empty_blocks, fp16_bytes, fp16_from_bytes
from .lattice import Lattice, gguf_grid, search

GRID = gguf_grid(gguf.quants.IQ1_S)  # (2048, 8) int8 in {-1, 0, 1}
DELTA = float(gguf.quants.IQ1_S.delta)  # 0.125
_FS, _FM = block_fields("IQ1_S"), block_fields("IQ1_M")  # byte ranges
HALF = GRID.shape[0]  # search index >= HALF: the point shifted by -DELTA

S = Lattice(GRID, sub=32, mult=1.0, parity=False, lmax=7, signed=True, delta=DELTA, shared_delta=True)
M = Lattice(GRID, sub=16, mult=1.0, parity=False, lmax=7, signed=True, delta=DELTA)


def _delta(neg: np.ndarray) -> np.ndarray:
    return np.where(neg, np.float32(-DELTA), np.float32(DELTA))


# ---------------------------------------------------------------------------
# IQ1_S
# ---------------------------------------------------------------------------
def pack_s(d: np.ndarray, l: np.ndarray, idx: np.ndarray, dneg: np.ndarray) -> np.ndarray:
    """d (B,) (stored as fp16), l (B, 8) in [0, 7], idx (B, 32) in [0, 2048), dneg (B, 8) bool -> (B, 50)."""
    B = idx.shape[0]
    idx = idx.astype(np.uint16)
    hi = ((idx >> 8).reshape(B, 8, 4) << (3 * np.arange(4, dtype=np.uint16))).sum(-1, dtype=np.uint16)
    qh = (hi | (np.asarray(l).astype(np.uint16) << 12) | (dneg.astype(np.uint16) << 15)).astype("<u2")
    out = empty_blocks("IQ1_S", B)
    out[:, _FS["d"]] = fp16_bytes(d)
    out[:, _FS["qs"]] = (idx & 255).astype(np.uint8)
    out[:, _FS["qh"]] = qh.view(np.uint8).reshape(B, 16)
    return out


def unpack_s(raw: np.ndarray):
    """(B, 50) -> l (B, 8), idx (B, 32), dneg (B, 8) bool."""
    B = raw.shape[0]
    qh = np.ascontiguousarray(raw[:, _FS["qh"]]).view("<u2")  # (B, 8)
    hi = (qh[:, :, None] >> (3 * np.arange(4, dtype=np.uint16))) & 7  # (B, 8, 4)
    idx = raw[:, _FS["qs"]].astype(np.uint16) | (hi.reshape(B, 32) << 8)
    return (qh >> 12) & 7, idx, (qh >> 15).astype(bool)


def pack_search_s(d: np.ndarray, l: np.ndarray, idx: np.ndarray, neg=None) -> np.ndarray:
    """pack_s from search indices (B, 32) in [0, 2 HALF): the top half means delta < 0 (shared per sub-block)."""
    return pack_s(d, l, idx % HALF, idx.reshape(-1, 8, 4)[:, :, 0] >= HALF)


def encode_s(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """(B, 256) float32 [, weights] -> (B, 50) uint8."""
    c = search(S, x, w)
    return pack_search_s(c.d, c.l, c.idx)


def decode_s(raw: np.ndarray) -> np.ndarray:
    """(B, 50) uint8 -> (B, 256) float32, bit-exact with gguf-py: (d (2 l + 1)) (grid + delta)."""
    l, idx, dneg = unpack_s(raw)
    B = raw.shape[0]
    dl = (fp16_from_bytes(raw[:, _FS["d"]]) * (2 * l + 1).astype(np.float32))[:, :, None]  # (B, 8, 1)
    g = GRID.astype(np.float32)[idx].reshape(B, 8, 32) + _delta(dneg)[:, :, None]
    return (dl * g).reshape(B, QK_K)


# ---------------------------------------------------------------------------
# IQ1_M
# ---------------------------------------------------------------------------
def pack_m(d: np.ndarray, l: np.ndarray, idx: np.ndarray, dneg: np.ndarray) -> np.ndarray:
    """d (B,) (stored as fp16), l (B, 16) in [0, 7], idx (B, 32) in [0, 2048), dneg (B, 32) bool -> (B, 56)."""
    B = idx.shape[0]
    idx = idx.astype(np.uint16)
    nib = ((idx >> 8) | (dneg.astype(np.uint16) << 3)).astype(np.uint8).reshape(B, 16, 2)
    qh = nib[:, :, 0] | (nib[:, :, 1] << 4)
    sc = (np.asarray(l).astype(np.uint16).reshape(B, 4, 4) << (3 * np.arange(4, dtype=np.uint16))).sum(
        -1, dtype=np.uint16)
    dbits = np.ascontiguousarray(fp16_bytes(d)).view("<u2")  # (B, 1)
    sc |= ((dbits >> (4 * np.arange(4, dtype=np.uint16))) & 0xF) << 12
    out = empty_blocks("IQ1_M", B)
    out[:, _FM["qs"]] = (idx & 255).astype(np.uint8)
    out[:, _FM["qh"]] = qh
    out[:, _FM["scales"]] = sc.astype("<u2").view(np.uint8).reshape(B, 8)
    return out


def unpack_m(raw: np.ndarray):
    """(B, 56) -> d (B,) float32, l (B, 16), idx (B, 32), dneg (B, 32) bool."""
    B = raw.shape[0]
    sc = np.ascontiguousarray(raw[:, _FM["scales"]]).view("<u2")  # (B, 4)
    dbits = ((sc >> 12) << (4 * np.arange(4, dtype=np.uint16))).sum(-1, dtype=np.uint16).astype("<u2")
    d = dbits.view(np.float16).astype(np.float32)
    l = ((sc[:, :, None] >> (3 * np.arange(4, dtype=np.uint16))) & 7).reshape(B, 16)
    nib = (raw[:, _FM["qh"], None] >> np.array([0, 4], np.uint8)).reshape(B, 32)
    idx = raw[:, _FM["qs"]].astype(np.uint16) | ((nib & 7).astype(np.uint16) << 8)
    return d, l, idx, (nib & 8).astype(bool)


def pack_search_m(d: np.ndarray, l: np.ndarray, idx: np.ndarray, neg=None) -> np.ndarray:
    """pack_m from search indices (B, 32) in [0, 2 HALF): the top half means delta < 0."""
    return pack_m(d, l, idx % HALF, idx >= HALF)


def encode_m(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """(B, 256) float32 [, weights] -> (B, 56) uint8."""
    c = search(M, x, w)
    return pack_search_m(c.d, c.l, c.idx)


def decode_m(raw: np.ndarray) -> np.ndarray:
    """(B, 56) uint8 -> (B, 256) float32: (d (2 l + 1)) (grid + delta), a set delta bit meaning -1/8.
    Bit-exact with gguf-py and within 1 ulp of llama.cpp's dequantize_row_iq1_m (both read the sign
    the same way: tests/test_quants_vs_llamacpp.py::test_iq1_m_delta_signs_as_llamacpp)."""
    d, l, idx, dneg = unpack_m(raw)
    B = raw.shape[0]
    dl = (d[:, None] * (2 * l + 1).astype(np.float32))[:, :, None]  # (B, 16, 1)
    g = GRID.astype(np.float32)[idx] + _delta(dneg)[:, :, None]  # (B, 32, 8)
    return (dl * g.reshape(B, 16, 16)).reshape(B, QK_K)


# type -> (search spec, pack(d, l, idx, neg)): what vector GPTQ (convert/gptq_vq.py) needs
LATTICES = {"IQ1_S": (S, pack_search_s), "IQ1_M": (M, pack_search_m)}
