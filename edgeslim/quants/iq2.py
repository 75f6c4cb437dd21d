"""IQ2_XXS, IQ2_XS, IQ2_S: 2-bit lattice codes, 256 weights per super-block (ggml's block_iq2_*).

Each group of 8 weights is one point of an 8-dimensional grid of magnitudes
{8, 25, 43} (the E8-like lattice points llama.cpp kept), times a sign per weight:

    w[i] = d * (0.5 + l[i // sub]) * 0.25 * GRID[idx[i // 8], i % 8] * sign[i]

    GRID_XXS: (256, 8) int8     GRID_XS: (512, 8) int8     GRID_S: (1024, 8) int8   (from gguf-py)
    KSIGNS:   (128,) uint8      sign pattern for a 7-bit index: bit k set = weight k negative;
                                bit 7 makes the count of minus signs even (KSIGNS[s] & 127 == s)

IQ2_XXS, 66 bytes (2.06 bpw), sub = 32:
    byte 0..1   d (fp16)
    byte 2..65  per sub-block j = 0..7, two little-endian uint32 words:
                  q[2j]     byte k = idx of group 4j + k                     (k = 0..3)
                  q[2j + 1] bits 7k..7k+6 = sign index of group 4j + k, bits 28..31 = l[j]

IQ2_XS, 74 bytes (2.31 bpw), sub = 16:
    byte  0 ..  1   d (fp16)
    byte  2 .. 65   qs[32] uint16 LE: bits 0..8 = idx of group g, bits 9..15 = its sign index
    byte 66 .. 73   scales[8]: l[2m] = low4(scales[m]), l[2m + 1] = high4(scales[m])

IQ2_S, 82 bytes (2.56 bpw), sub = 16, free signs:
    byte  0 ..  1   d (fp16)
    byte  2 .. 33   qs[32]     low 8 bits of idx of group g
    byte 34 .. 65   signs[32]  bit k of signs[g] = weight 8g + k negative
    byte 66 .. 73   qh[8]      bits 2k..2k+1 of qh[m] = idx bits 8..9 of group 4m + k
    byte 74 .. 81   scales[8]  as IQ2_XS

The search is `lattice.py`'s (exact weighted nearest grid point per group,
sub-block and super-block scale search, parity-aware signs).

Throughput, million weights per CPU-second on one core of this 2-core machine while busy
(`python scripts/compare_quantizers.py --rows 256 --cols 4096 --no-mlx`, column "ours Mw/s",
normal / student-t / stories260K weights; GPTQ: `... --gptq --rows 1536 --cols 768`):
IQ2_XXS 2.3-2.4, IQ2_XS 1.1-1.3, IQ2_S 0.8-0.9 (the brute-force search scales with
the grid: 256 / 512 / 1024 points); vector GPTQ 0.85 / 0.72 / 0.62.  Weighted error vs
llama.cpp (imatrix): IQ2_XXS 0.66-0.79x, IQ2_XS 0.82-0.90x, IQ2_S 0.81-0.93x.
"""
from __future__ import annotations

import gguf
import numpy as np

from ..tables import QK_K, block_fields
from ._common import empty_blocks, fp16_bytes, fp16_from_bytes
from .lattice import Lattice, gguf_grid, search

GRID_XXS = gguf_grid(gguf.quants.IQ2_XXS)  # (256, 8) int8 in {8, 25, 43}
GRID_XS = gguf_grid(gguf.quants.IQ2_XS)  # (512, 8) int8
GRID_S = gguf_grid(gguf.quants.IQ2_S)  # (1024, 8) int8
KSIGNS = np.frombuffer(gguf.quants.IQ2_XXS.ksigns, np.uint8).copy()  # (128,) uint8
SIGN_BITS = np.unpackbits(KSIGNS[:, None], axis=1, bitorder="little").astype(bool)  # (128, 8) minus signs

_FXXS, _FXS, _FS = (block_fields(n) for n in ("IQ2_XXS", "IQ2_XS", "IQ2_S"))  # byte ranges

XXS = Lattice(GRID_XXS, sub=32, mult=0.125, parity=True)
XS = Lattice(GRID_XS, sub=16, mult=0.125, parity=True)
S = Lattice(GRID_S, sub=16, mult=0.125, parity=False)


def sign_index(neg: np.ndarray) -> np.ndarray:
    """(..., 8) bool minus signs with an even count -> 7-bit KSIGNS index (uint8)."""
    return np.packbits(neg, axis=-1, bitorder="little")[..., 0] & np.uint8(127)


def _signs(neg: np.ndarray) -> np.ndarray:
    """(B, n) bool minus signs -> (B, n) float32 +-1."""
    return np.where(neg, np.float32(-1), np.float32(1))


def _values(raw_d: np.ndarray, l: np.ndarray, grid: np.ndarray, idx: np.ndarray, neg: np.ndarray, sub: int):
    """The decoder's arithmetic, in gguf-py's order: ((d * (0.5 + l) * 0.25) * grid) * sign."""
    B = idx.shape[0]
    d = fp16_from_bytes(raw_d)  # (B, 1)
    db = (d * (np.float32(0.5) + l.astype(np.float32)) * np.float32(0.25))[:, :, None]  # (B, S, 1)
    g = grid.astype(np.float32)[idx].reshape(B, QK_K // sub, sub)
    return (db * g * _signs(neg).reshape(B, QK_K // sub, sub)).reshape(B, QK_K)


def _nibble_scales(b: np.ndarray) -> np.ndarray:
    return (b[:, :, None] >> np.array([0, 4], np.uint8)).reshape(b.shape[0], -1) & 0xF


def _pack_nibble_scales(l: np.ndarray) -> np.ndarray:
    l = np.asarray(l).astype(np.uint8)
    return l[:, 0::2] | (l[:, 1::2] << 4)


# ---------------------------------------------------------------------------
# IQ2_XXS
# ---------------------------------------------------------------------------
def pack_xxs(d: np.ndarray, l: np.ndarray, idx: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """d (B,) (stored as fp16), l (B, 8) in [0, 15], idx (B, 32) in [0, 256), neg (B, 256) bool -> (B, 66)."""
    B = idx.shape[0]
    s = sign_index(neg.reshape(B, 32, 8)).astype(np.uint32).reshape(B, 8, 4)
    hi = (s << (7 * np.arange(4, dtype=np.uint32))).sum(-1, dtype=np.uint32) | (l.astype(np.uint32) << 28)
    lo = np.ascontiguousarray(idx.astype(np.uint8).reshape(B, 8, 4)).view("<u4")[:, :, 0]
    words = np.stack([lo, hi], axis=2).astype("<u4")  # (B, 8, 2)
    out = empty_blocks("IQ2_XXS", B)
    out[:, _FXXS["d"]] = fp16_bytes(d)
    out[:, _FXXS["qs"]] = words.view(np.uint8).reshape(B, 64)
    return out


def unpack_xxs(raw: np.ndarray):
    """(B, 66) -> l (B, 8), idx (B, 32), neg (B, 256)."""
    B = raw.shape[0]
    q = np.ascontiguousarray(raw[:, _FXXS["qs"]]).view("<u4").reshape(B, 8, 2)
    idx = np.ascontiguousarray(q[:, :, 0]).view(np.uint8).reshape(B, 32)
    s = (q[:, :, 1:2] >> (7 * np.arange(4, dtype=np.uint32))) & 127  # (B, 8, 4)
    return (q[:, :, 1] >> 28).astype(np.uint8), idx, SIGN_BITS[s].reshape(B, QK_K)


def encode_xxs(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """(B, 256) float32 [, weights] -> (B, 66) uint8."""
    c = search(XXS, x, w)
    return pack_xxs(c.d, c.l, c.idx, c.neg)


def decode_xxs(raw: np.ndarray) -> np.ndarray:
    """(B, 66) uint8 -> (B, 256) float32, bit-exact with gguf-py."""
    l, idx, neg = unpack_xxs(raw)
    return _values(raw[:, _FXXS["d"]], l, GRID_XXS, idx, neg, 32)


# ---------------------------------------------------------------------------
# IQ2_XS
# ---------------------------------------------------------------------------
def pack_xs(d: np.ndarray, l: np.ndarray, idx: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """d (B,), l (B, 16) in [0, 15], idx (B, 32) in [0, 512), neg (B, 256) bool -> (B, 74)."""
    B = idx.shape[0]
    s = sign_index(neg.reshape(B, 32, 8)).astype(np.uint16)
    qs = (idx.astype(np.uint16) | (s << 9)).astype("<u2")
    out = empty_blocks("IQ2_XS", B)
    out[:, _FXS["d"]] = fp16_bytes(d)
    out[:, _FXS["qs"]] = qs.view(np.uint8).reshape(B, 64)
    out[:, _FXS["scales"]] = _pack_nibble_scales(l)
    return out


def unpack_xs(raw: np.ndarray):
    """(B, 74) -> l (B, 16), idx (B, 32), neg (B, 256)."""
    B = raw.shape[0]
    qs = np.ascontiguousarray(raw[:, _FXS["qs"]]).view("<u2")  # (B, 32)
    return _nibble_scales(raw[:, _FXS["scales"]]), qs & 511, SIGN_BITS[qs >> 9].reshape(B, QK_K)


def encode_xs(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """(B, 256) float32 [, weights] -> (B, 74) uint8."""
    c = search(XS, x, w)
    return pack_xs(c.d, c.l, c.idx, c.neg)


def decode_xs(raw: np.ndarray) -> np.ndarray:
    """(B, 74) uint8 -> (B, 256) float32, bit-exact with gguf-py."""
    l, idx, neg = unpack_xs(raw)
    return _values(raw[:, _FXS["d"]], l, GRID_XS, idx, neg, 16)


# ---------------------------------------------------------------------------
# IQ2_S
# ---------------------------------------------------------------------------
def pack_s(d: np.ndarray, l: np.ndarray, idx: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """d (B,), l (B, 16) in [0, 15], idx (B, 32) in [0, 1024), neg (B, 256) bool -> (B, 82)."""
    B = idx.shape[0]
    idx = idx.astype(np.uint16)
    signs = np.packbits(neg.reshape(B, 32, 8), axis=-1, bitorder="little")[..., 0]
    hi = (idx >> 8).astype(np.uint8).reshape(B, 8, 4) << (2 * np.arange(4, dtype=np.uint8))
    out = empty_blocks("IQ2_S", B)
    out[:, _FS["d"]] = fp16_bytes(d)
    out[:, _FS["qs"]] = (idx & 255).astype(np.uint8)
    out[:, _FS["signs"]] = signs
    out[:, _FS["qh"]] = np.bitwise_or.reduce(hi, axis=2)
    out[:, _FS["scales"]] = _pack_nibble_scales(l)
    return out


def unpack_s(raw: np.ndarray):
    """(B, 82) -> l (B, 16), idx (B, 32), neg (B, 256)."""
    B = raw.shape[0]
    hi = (raw[:, _FS["qh"], None] >> (2 * np.arange(4, dtype=np.uint8))) & 3  # (B, 8, 4)
    idx = raw[:, _FS["qs"]].astype(np.uint16) | (hi.reshape(B, 32).astype(np.uint16) << 8)
    neg = np.unpackbits(raw[:, _FS["signs"]], axis=1, bitorder="little").astype(bool)
    return _nibble_scales(raw[:, _FS["scales"]]), idx, neg


def encode_s(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """(B, 256) float32 [, weights] -> (B, 82) uint8."""
    c = search(S, x, w)
    return pack_s(c.d, c.l, c.idx, c.neg)


def decode_s(raw: np.ndarray) -> np.ndarray:
    """(B, 82) uint8 -> (B, 256) float32, bit-exact with gguf-py."""
    l, idx, neg = unpack_s(raw)
    return _values(raw[:, _FS["d"]], l, GRID_S, idx, neg, 16)


# type -> (search spec, pack(d, l, idx, neg)): what vector GPTQ (convert/gptq_vq.py) needs
LATTICES = {"IQ2_XXS": (XXS, pack_xxs), "IQ2_XS": (XS, pack_xs), "IQ2_S": (S, pack_s)}  # for vector GPTQ
