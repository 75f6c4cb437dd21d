"""ggml blocks -> MLX's affine layout, exactly, once at load (pure numpy: MLX is not imported here).

`mx.quantized_matmul` multiplies by w = s * q + b, one (s, b) per group of
`group` weights and q a `bits`-bit code in MLX's packed uint32 stream (the
AFFINE{bits}_G{group} layout, drawn in `edgeslim/quants/affine.py`). These ggml
types are already that form with groups of 32, so they are re-laid out, not
re-quantized:

    Q8_0   w = d * q            q int8       code q + 128 (= stored byte ^ 0x80)   s = d      b = -128 d       8 bits
    Q4_K   w = (d*sc_j) * q - dmin*m_j       code q                                s = d*sc_j b = -(dmin*m_j)  4 bits
    Q5_K   as Q4_K with 5-bit codes                                                                            5 bits
           (j = the 32-weight sub-block; d, dmin fp16; sc, m six-bit; block layouts in edgeslim/quants/q4_k.py)
    Q4_0   w = d * (q - 8)      code q                                             s = d      b = -8 d         4 bits
    Q4_1   w = d * q + m        code q                                             s = d      b = m            4 bits
    Q5_0   w = d * (q - 16)     code q                                             s = d      b = -16 d        5 bits
    Q5_1   w = d * q + m        code q                                             s = d      b = m            5 bits
    IQ4_NL w = d * kv[q]        code kv[q] + 128                                   s = d      b = -128 d       8 bits
    TQ1_0  w = d * (q - 1)      code q in {0, 1, 2} (one d per 256: 8 equal groups) s = d     b = -d           2 bits
    TQ2_0  as TQ1_0
           (element-order codes from runtime/blocks.py)

The other IQ types (lattice grids, IQ4_XS's 6-bit sub-scales times a table) have no
exact affine form in MLX's bit widths; the backend dequantizes them once at load.

Exactness, in float32 (the arithmetic of MLX's CPU path and of the numpy references):
  Q8_0   d has 11 significant bits and a code 8, so s*code is exact; s*code + b = d*q is
         representable, so the sum is exact too: equal to ggml's d*q (also exact).  The same
         holds for Q4_0, Q5_0, IQ4_NL (d * small integer) and the ternary types (d * {-1, 0, 1}).
  Q4_1/5_1 s*code = d*q exact, then one rounding of + m, as ggml's (d * q) + m.
  Q4_K/5 s = d*sc needs at most 17 bits and s*code at most 22 (< 24): both exact; b =
         -(dmin*m) is exact; the one rounding left is the final add, the same rounding
         ggml's (d*sc)*code - dmin*m makes. So the dequantized weights are bit-identical.
  Scales and biases are float32 here; float16 holds d*sc exactly only when its low bits
  happen to be zero (`fits` tells; the backend keeps float32 otherwise).
On a GPU, MLX's kernels fold s and b out of the dot product (s * sum(x q) + b * sum(x)),
which equals the float32 dequantized product up to float32 rounding of the sums.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import FormatError
from ...quants import affine
from ...quants._common import fp16_from_bytes
from ...quants.iq4 import KVALUES
from ...quants.q4_k import _unpack_nibbles, unpack_scales
from ...tables import block_fields, quant_info
from .. import blocks as gb

GROUP = 32  # every transcoded type has one scale per 32 weights
TRANSCODED = {"Q8_0": 8, "Q4_K": 4, "Q5_K": 5, "Q4_0": 4, "Q4_1": 4, "Q5_0": 5, "Q5_1": 5, "IQ4_NL": 8,
              "TQ1_0": 2, "TQ2_0": 2}  # ggml type -> MLX code bits
CHUNK_WEIGHTS = 1 << 20  # rows are transcoded in chunks of about this many weights (bounds temporaries)

_Q8, _Q4K, _Q5K = block_fields("Q8_0"), block_fields("Q4_K"), block_fields("Q5_K")  # byte ranges in a block


@dataclass
class AffineParts:
    """A weight in MLX's affine layout: w[r, c] = scales[r, g] * code[r, c] + biases[r, g], g = c // group."""

    codes: np.ndarray  # (rows, cols * bits / 32) uint32, MLX's packed stream
    scales: np.ndarray  # (rows, cols / group) float32 (float16 when taken from an AFFINE file)
    biases: np.ndarray
    bits: int
    group: int

    def dequantize(self) -> np.ndarray:
        """float32 (rows, cols), computed as mx.dequantize does (numpy reference)."""
        return affine.dequantize(self.codes, self.scales, self.biases, self.bits, self.group)


def fits(a: np.ndarray, dtype) -> bool:
    """True when every value of `a` survives a round trip through numpy `dtype` unchanged."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.array_equal(np.asarray(a, np.float32).astype(dtype).astype(np.float32), a))


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """(rows, cols) codes in [0, 2^bits) -> (rows, cols*bits/32) uint32 in MLX's bit stream.

    4 and 8 bits are byte-aligned (byte j of a row holds codes 2j | 2j+1 << 4, or code j), so a
    little-endian uint32 view of those bytes is the stream; other widths use the reference packer.
    """
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if bits == 8:
        return codes.view("<u4").astype(np.uint32, copy=False)
    if bits == 4:
        return np.ascontiguousarray(codes[:, 0::2] | (codes[:, 1::2] << 4)).view("<u4").astype(np.uint32, copy=False)
    return affine.pack(codes, bits)


def _q8_0(blocks: np.ndarray):
    """(B, 34) -> codes (B, 32) uint8, scales, biases (B, 1) float32."""
    d = fp16_from_bytes(blocks[:, _Q8["d"]])  # (B, 1)
    return blocks[:, _Q8["qs"]] ^ np.uint8(0x80), d, np.float32(-128) * d


def _k_quant(blocks: np.ndarray, bits: int):
    """(B, 144 | 176) -> codes (B, 256) uint8, scales, biases (B, 8) float32 (one per 32-weight sub-block)."""
    f = _Q4K if bits == 4 else _Q5K
    d, dmin = fp16_from_bytes(blocks[:, f["d"]]), fp16_from_bytes(blocks[:, f["dmin"]])  # (B, 1)
    sc, m = unpack_scales(blocks[:, f["scales"]])  # (B, 8) each
    codes = _unpack_nibbles(blocks[:, f["qs"]])  # (B, 256)
    if bits == 5:  # qh[l] bit k = 5th bit of code 32k + l
        high = (blocks[:, None, f["qh"]] >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1  # (B, 8, 32)
        codes = codes | (high.reshape(-1, 256) << 4)
    return codes, d * sc.astype(np.float32), -(dmin * m.astype(np.float32))


def _legacy(blocks: np.ndarray, qtype: str):
    """(B, bytes) Q4_0/Q4_1/Q5_0/Q5_1/IQ4_NL -> codes (B, 32) uint8, scales, biases (B, 1) float32."""
    f = gb.fields(blocks, qtype)
    d = gb.f16(f["d"])[:, None]
    q = gb.legacy_codes(f, qtype)
    if qtype == "IQ4_NL":
        return (KVALUES.astype(np.int16)[q] + 128).astype(np.uint8), d, np.float32(-128) * d
    if "m" in f:
        return q, d, gb.f16(f["m"])[:, None]
    return q, d, -np.float32(1 << (TRANSCODED[qtype] - 1)) * d  # Q4_0: -8 d, Q5_0: -16 d


def _ternary(blocks: np.ndarray, qtype: str):
    """(B, bytes) TQ1_0/TQ2_0 -> codes (B, 256), scales, biases (B, 8): d and -d for each group of 32."""
    f = gb.fields(blocks, qtype)
    d = np.repeat(gb.f16(f["d"])[:, None], 256 // GROUP, axis=1)
    return gb.ternary_codes(f, qtype), d, -d


def _unpack(qtype: str, blocks: np.ndarray, bits: int):
    if qtype == "Q8_0":
        return _q8_0(blocks)
    if qtype in ("Q4_K", "Q5_K"):
        return _k_quant(blocks, bits)
    if qtype.startswith("TQ"):
        return _ternary(blocks, qtype)
    return _legacy(blocks, qtype)


def transcode(qtype: str, raw: np.ndarray, shape: tuple[int, int]) -> AffineParts:
    """Re-lay a tensor of a TRANSCODED type (its GGUF bytes, `shape` = (rows, cols)) as MLX affine, exactly."""
    bits = TRANSCODED[qtype]
    rows, cols = shape
    info = quant_info(qtype)
    raw = np.asarray(raw).reshape(-1).view(np.uint8)
    if cols % info.block or raw.size != rows * info.nbytes(cols):
        raise FormatError(f"{qtype} tensor of shape {shape} has {raw.size} bytes; the file is corrupt")
    per_row = cols // info.block  # blocks per row
    blocks = raw.reshape(rows, per_row, info.block_bytes)
    codes = np.empty((rows, cols * bits // 32), np.uint32)
    scales = np.empty((rows, cols // GROUP), np.float32)
    biases = np.empty_like(scales)
    step = max(1, CHUNK_WEIGHTS // cols)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        b = blocks[r0:r1].reshape(-1, info.block_bytes)
        q, s, o = _unpack(qtype, b, bits)
        codes[r0:r1] = pack_codes(q.reshape(r1 - r0, cols), bits)
        scales[r0:r1] = s.reshape(r1 - r0, -1)
        biases[r0:r1] = o.reshape(r1 - r0, -1)
    return AffineParts(codes, scales, biases, bits, GROUP)
