"""IQ3_XXS and IQ3_S: 3-bit lattice codes, 256 weights per super-block (ggml's block_iq3_xxs / block_iq3_s).

Each 4 weights are one point of a 4-dimensional grid of magnitudes, times a sign per weight;
one 4-bit sub-scale l per 32 weights:

    IQ3_XXS: w[i] = d * (0.5 + l[i // 32]) * 0.5 * GRID_XXS[idx[i // 4], i % 4] * sign[i]
    IQ3_S:   w[i] = d * (1 + 2 l[i // 32])       * GRID_S[idx[i // 4], i % 4]   * sign[i]

    GRID_XXS: (256, 4) int8 in {4, 12, 20, 28, 36, 44, 52, 62}       (from gguf-py)
    GRID_S:   (512, 4) int8 in {1, 3, 5, 7, 9, 11, 13, 15}

IQ3_XXS, 98 bytes (3.06 bpw), even number of minus signs per 8 weights (iq2.KSIGNS):
    byte  0 ..  1   d (fp16)
    byte  2 .. 65   qs[64]     idx of slot s (weights 4s .. 4s+3)
    byte 66 .. 97   uint32 LE per sub-block j: bits 7k..7k+6 = sign index of group 4j + k (8 weights),
                    bits 28..31 = l[j]

IQ3_S, 110 bytes (3.44 bpw), free signs:
    byte   0 ..   1   d (fp16)
    byte   2 ..  65   qs[64]     low 8 bits of idx of slot s
    byte  66 ..  73   qh[8]      bit k of qh[m] = bit 8 of idx of slot 8m + k
    byte  74 .. 105   signs[32]  bit k of signs[g] = weight 8g + k negative
    byte 106 .. 109   scales[4]  l[2m] = low4(scales[m]), l[2m + 1] = high4(scales[m])

The search is `lattice.py`'s (exact weighted nearest grid point per slot,
sub-block and super-block scale search; under IQ3_XXS's parity rule the one
flipped sign of an odd group goes to whichever of its two slots costs less).

Throughput, million weights per CPU-second on one core of this 2-core machine while busy
(`python scripts/compare_quantizers.py --rows 256 --cols 4096 --no-mlx`, column "ours Mw/s",
normal / student-t / stories260K weights; GPTQ: `... --gptq --rows 1536 --cols 768`):
IQ3_XXS 0.8-1.0, IQ3_S 0.9-1.0; vector GPTQ 0.58 / 0.43.  Weighted error vs llama.cpp:
IQ3_XXS 0.75-0.89x, IQ3_S 0.78-0.88x.
"""
from __future__ import annotations

import gguf
import numpy as np

from ..tables import QK_K, block_fields
from ._common import empty_blocks, fp16_bytes, fp16_from_bytes
from .iq2 import SIGN_BITS, sign_index
from .lattice import Lattice, gguf_grid, search

GRID_XXS = gguf_grid(gguf.quants.IQ3_XXS)  # (256, 4) int8
GRID_S = gguf_grid(gguf.quants.IQ3_S)  # (512, 4) int8

_FXXS, _FS = block_fields("IQ3_XXS"), block_fields("IQ3_S")  # byte ranges

XXS = Lattice(GRID_XXS, sub=32, mult=0.25, parity=True)
S = Lattice(GRID_S, sub=32, mult=1.0, parity=False)


def _grid_values(grid: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(B, 64) slot indices -> (B, 8, 32) grid magnitudes per sub-block."""
    return grid.astype(np.float32)[idx].reshape(idx.shape[0], 8, 32)


def _signs(neg: np.ndarray) -> np.ndarray:
    return np.where(neg, np.float32(-1), np.float32(1)).reshape(neg.shape[0], 8, 32)


# ---------------------------------------------------------------------------
# IQ3_XXS
# ---------------------------------------------------------------------------
def pack_xxs(d: np.ndarray, l: np.ndarray, idx: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """d (B,) (stored as fp16), l (B, 8) in [0, 15], idx (B, 64) in [0, 256), neg (B, 256) bool -> (B, 98)."""
    B = idx.shape[0]
    s = sign_index(neg.reshape(B, 32, 8)).astype(np.uint32).reshape(B, 8, 4)
    words = ((s << (7 * np.arange(4, dtype=np.uint32))).sum(-1, dtype=np.uint32)
             | (np.asarray(l).astype(np.uint32) << 28)).astype("<u4")
    out = empty_blocks("IQ3_XXS", B)
    out[:, _FXXS["d"]] = fp16_bytes(d)
    out[:, _FXXS["qs"]] = idx.astype(np.uint8)
    out[:, _FXXS["sas"]] = words.view(np.uint8).reshape(B, 32)
    return out


def unpack_xxs(raw: np.ndarray):
    """(B, 98) -> l (B, 8), idx (B, 64), neg (B, 256)."""
    B = raw.shape[0]
    words = np.ascontiguousarray(raw[:, _FXXS["sas"]]).view("<u4")  # (B, 8)
    s = (words[:, :, None] >> (7 * np.arange(4, dtype=np.uint32))) & 127  # (B, 8, 4)
    return (words >> 28).astype(np.uint8), raw[:, _FXXS["qs"]], SIGN_BITS[s].reshape(B, QK_K)


def encode_xxs(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """(B, 256) float32 [, weights] -> (B, 98) uint8."""
    c = search(XXS, x, w)
    return pack_xxs(c.d, c.l, c.idx, c.neg)


def decode_xxs(raw: np.ndarray) -> np.ndarray:
    """(B, 98) uint8 -> (B, 256) float32, bit-exact with gguf-py: ((d (0.5 + l) 0.5) grid) sign."""
    l, idx, neg = unpack_xxs(raw)
    d = fp16_from_bytes(raw[:, _FXXS["d"]])
    db = (d * (np.float32(0.5) + l.astype(np.float32)) * np.float32(0.5))[:, :, None]
    return (db * _grid_values(GRID_XXS, idx) * _signs(neg)).reshape(-1, QK_K)


# ---------------------------------------------------------------------------
# IQ3_S
# ---------------------------------------------------------------------------
def pack_s(d: np.ndarray, l: np.ndarray, idx: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """d (B,), l (B, 8) in [0, 15], idx (B, 64) in [0, 512), neg (B, 256) bool -> (B, 110)."""
    B = idx.shape[0]
    idx = idx.astype(np.uint16)
    qh = np.packbits((idx >> 8).astype(np.uint8).reshape(B, 8, 8), axis=-1, bitorder="little")[..., 0]
    signs = np.packbits(neg.reshape(B, 32, 8), axis=-1, bitorder="little")[..., 0]
    l = np.asarray(l).astype(np.uint8)
    out = empty_blocks("IQ3_S", B)
    out[:, _FS["d"]] = fp16_bytes(d)
    out[:, _FS["qs"]] = (idx & 255).astype(np.uint8)
    out[:, _FS["qh"]] = qh
    out[:, _FS["signs"]] = signs
    out[:, _FS["scales"]] = l[:, 0::2] | (l[:, 1::2] << 4)
    return out


def unpack_s(raw: np.ndarray):
    """(B, 110) -> l (B, 8), idx (B, 64), neg (B, 256)."""
    hi = np.unpackbits(raw[:, _FS["qh"]], axis=1, bitorder="little").astype(np.uint16)  # (B, 64)
    idx = raw[:, _FS["qs"]].astype(np.uint16) | (hi << 8)
    neg = np.unpackbits(raw[:, _FS["signs"]], axis=1, bitorder="little").astype(bool)
    l = (raw[:, _FS["scales"], None] >> np.array([0, 4], np.uint8)).reshape(-1, 8) & 0xF
    return l, idx, neg


def encode_s(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """(B, 256) float32 [, weights] -> (B, 110) uint8."""
    c = search(S, x, w)
    return pack_s(c.d, c.l, c.idx, c.neg)


def decode_s(raw: np.ndarray) -> np.ndarray:
    """(B, 110) uint8 -> (B, 256) float32, bit-exact with gguf-py: (d (1 + 2 l)) grid sign."""
    l, idx, neg = unpack_s(raw)
    db = (fp16_from_bytes(raw[:, _FS["d"]]) * (1 + 2 * l).astype(np.float32))[:, :, None]
    return (db * _grid_values(GRID_S, idx) * _signs(neg)).reshape(-1, QK_K)


# type -> (search spec, pack(d, l, idx, neg)): what vector GPTQ (convert/gptq_vq.py) needs
LATTICES = {"IQ3_XXS": (XXS, pack_xxs), "IQ3_S": (S, pack_s)}  # for vector GPTQ
