"""Repack stored weights (GGUF ggml blocks, MLX affine bit streams) into kernel planes.

Runs once per weight at load, in numpy.  The kernels in `kernels.py` read every
weight as five byte planes `(p0, p1, p2, p3, p4)`, each `(rows, n)` uint8 and
C-contiguous (an unused plane has n = 0), so that a row's codes are one
contiguous stream and a 32-byte load gives 32 codes of one "chunk" after at
most a shift and a mask.  Element order inside a row is the stored order for
the ggml types; the affine types use an interleaved order (see below).

Code planes (one 32-byte vector = codes of 1, 2, 4 or 8 chunks of 32 elements):

    nib    32 bytes -> 2 chunks    chunk 2k = byte & 0xF, chunk 2k+1 = byte >> 4
    crumb  32 bytes -> 4 chunks    chunk s  = (byte >> 2s) & 3
    bit    32 bytes -> 8 chunks    chunk k  = (byte >> k) & 1

ggml k-quants keep their own super-block (256 weights) order; the planes are
their code arrays with the block headers split off:

    Q4_K  p0 qs (128 B/sb, nib)   p2 scales u8 x8   p3 mins u8 x8    p4 d, dmin f16
    Q5_K  + p1 qh (32 B/sb, bit k = 5th bit of chunk k)
    Q6_K  p0 ql (128 B, nib, ggml order)  p1 qh (64 B, crumb)  p2 scales i8 x16  p4 d f16
    Q2_K  p0 qs (64 B, crumb)     p2 scale|min<<4 u8 x16          p4 d, dmin f16
    Q3_K  p0 qs (64 B, crumb)     p1 hmask (32 B, bit)  p2 (scale-32) i8 x16  p4 d f16
    Q8_0  p0 qs i8 (32 B per group of 32)   p2 d f16 per group

Affine AFFINE{b}_G{g} (w = s*q + b): the kernel walks "units" of U = 32*S
elements whose chunk c, lane j holds element j*S + c of the unit (a stride-S
interleave; the activations are permuted the same way).  With that order
MLX's own bit stream is already a plane for 2, 4 and 8 bits, so those codes are
used in place (no copy):

    b=2  U=128  p0 = MLX words: byte j of a unit = elements 4j..4j+3 = crumb plane
    b=4  U=64   p0 = MLX words: byte j = elements 2j (low nibble), 2j+1 = nib plane
    b=8  U=32   p0 = MLX bytes, identity order
    b=3  U=256  p0 crumb (64 B/unit, low 2 bits)  p1 bit (32 B/unit, bit 2)
    b=5  U=256  p0 nib (128 B/unit, low 4 bits)   p1 bit (32 B/unit, bit 4)
    b=6  U=128  p0 nib (64 B/unit, low 4 bits)    p1 crumb (32 B/unit, bits 4-5)
    p2 scales f16, p3 biases f16, per group, padded with zeros to a multiple of 8 groups

Rows whose length is not a multiple of the unit are zero-padded (copy).
"""
from __future__ import annotations

import numpy as np

from ..errors import FormatError, UnsupportedError
from ..tables import QK_K, parse_affine, quant_info

PAD_GROUPS = 8  # affine scale/bias rows are padded to a multiple of this (one f32x8 vector)

# affine: bits -> unit length U (elements); the interleave stride is U // 32
AFFINE_UNIT = {2: 128, 3: 256, 4: 64, 5: 256, 6: 128, 8: 32}
# k-quants: weights per (integer) scale inside the 256-weight super-block
KQUANT_GROUP = {"Q2_K": 16, "Q3_K": 16, "Q4_K": 32, "Q5_K": 32, "Q6_K": 16}


def _empty(rows: int) -> np.ndarray:
    return np.zeros((rows, 0), np.uint8)


def _planes(*arrs) -> tuple[np.ndarray, ...]:
    """Five C-contiguous (rows, n) uint8 planes; None -> empty plane."""
    rows = next(a.shape[0] for a in arrs if a is not None)
    out = [(_empty(rows) if a is None else np.ascontiguousarray(a).view(np.uint8).reshape(rows, -1)) for a in arrs]
    return tuple(out + [_empty(rows)] * (5 - len(out)))


def _blocks(data, qtype: str, rows: int, cols: int) -> np.ndarray:
    """Raw ggml bytes -> (rows, n_blocks, block_bytes) uint8 view."""
    info = quant_info(qtype)
    raw = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    if cols % info.block:
        raise UnsupportedError(f"{qtype} weight with {cols} columns: ggml needs a multiple of {info.block}; "
                               f"re-quantize this tensor to another type")
    need = rows * info.nbytes(cols)
    if raw.size != need:
        raise FormatError(f"{qtype} weight ({rows}x{cols}) has {raw.size} bytes, expected {need}; the file is corrupt")
    return raw.reshape(rows, cols // info.block, info.block_bytes)


def _scale_min_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K 12-byte packed 6-bit (scale, min) x 8 -> two (..., 8) uint8.

    bytes 0-3: scale j (low 6 bits) | scale j+4 bits 4-5 (top 2)
    bytes 4-7: min j   (low 6 bits) | min j+4 bits 4-5 (top 2)
    bytes 8-11: scale j+4 bits 0-3 (low nibble) | min j+4 bits 0-3 (high nibble)
    Done on the three little-endian 32-bit words (4 bytes at a time; the masks
    keep bits from crossing byte boundaries).
    """
    w = np.ascontiguousarray(s).view("<u4")  # (..., 3)
    d, m, md = w[..., 0], w[..., 1], w[..., 2]
    lo6, hi2, nib = np.uint32(0x3F3F3F3F), np.uint32(0x30303030), np.uint32(0x0F0F0F0F)
    sc = np.stack([d & lo6, (md & nib) | ((d >> 2) & hi2)], axis=-1)
    mn = np.stack([m & lo6, ((md >> 4) & nib) | ((m >> 2) & hi2)], axis=-1)
    shape = s.shape[:-1] + (8,)
    return sc.view(np.uint8).reshape(shape), mn.view(np.uint8).reshape(shape)


def _scales_q3k(s: np.ndarray) -> np.ndarray:
    """Q3_K 12-byte packed 6-bit scales x 16 -> (..., 16) int8 (value - 32).

    bytes 0-7: low nibbles = scales 0-7 low 4 bits, high nibbles = scales 8-15 low 4 bits
    bytes 8-11: 2-bit high parts, scale 4i+k... at bits 2k of byte 8+(i%4)
    """
    lo = np.concatenate([s[..., 0:8] & 0x0F, s[..., 0:8] >> 4], axis=-1)
    hb = s[..., 8:12]
    hi = np.concatenate([(hb >> (2 * k)) & 3 for k in range(4)], axis=-1)
    return ((lo | (hi << 4)).astype(np.int16) - 32).astype(np.int8)


def repack_ggml(qtype: str, data, rows: int, cols: int) -> tuple[np.ndarray, ...]:
    """ggml quantized bytes -> five planes (see module doc)."""
    b = _blocks(data, qtype, rows, cols)
    if qtype == "Q4_K":  # d[2] dmin[2] scales[12] qs[128]
        sc, mn = _scale_min_k4(b[..., 4:16])
        return _planes(b[..., 16:144], None, sc, mn, b[..., 0:4])
    if qtype == "Q5_K":  # d[2] dmin[2] scales[12] qh[32] qs[128]
        sc, mn = _scale_min_k4(b[..., 4:16])
        return _planes(b[..., 48:176], b[..., 16:48], sc, mn, b[..., 0:4])
    if qtype == "Q6_K":  # ql[128] qh[64] scales[16] d[2]
        return _planes(b[..., 0:128], b[..., 128:192], b[..., 192:208], None, b[..., 208:210])
    if qtype == "Q2_K":  # scales[16] qs[64] d[2] dmin[2]
        return _planes(b[..., 16:80], None, b[..., 0:16], None, b[..., 80:84])
    if qtype == "Q3_K":  # hmask[32] qs[64] scales[12] d[2]
        return _planes(b[..., 32:96], b[..., 0:32], _scales_q3k(b[..., 96:108]), None, b[..., 108:110])
    if qtype == "Q8_0":  # d[2] qs[32]
        return _planes(b[..., 2:34], None, b[..., 0:2])
    raise UnsupportedError(f"no kernel for ggml type {qtype}")


def repack_float(qtype: str, data, rows: int, cols: int, colsp: int) -> tuple[np.ndarray, ...]:
    """F32/F16/BF16 bytes -> p0 = (rows, colsp * size) raw little-endian values, zero-padded."""
    size = quant_info(qtype).block_bytes
    raw = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    if raw.size != rows * cols * size:
        raise FormatError(f"{qtype} weight ({rows}x{cols}) has {raw.size} bytes, expected {rows * cols * size}")
    raw = raw.reshape(rows, cols * size)
    if colsp != cols:
        raw = np.pad(raw, ((0, 0), (0, (colsp - cols) * size)))
    return _planes(raw)


# ----------------------------------------------------------------------------- affine
def _mlx_codes(codes: np.ndarray, bits: int, cols: int) -> np.ndarray:
    """MLX little-endian bit stream (rows, cols*bits/8 bytes) -> (rows, cols) uint8 codes.

    Every `bits` bytes hold 8 codes; code k starts at bit k*bits and spans at most two bytes.
    """
    rows = codes.shape[0]
    by = codes.reshape(rows, -1, bits)
    out = np.empty((rows, by.shape[1], 8), np.uint8)
    for k in range(8):
        lo, sh = divmod(k * bits, 8)
        v = by[..., lo] >> sh
        if sh + bits > 8:
            v |= by[..., lo + 1] << (8 - sh)
        out[..., k] = v & ((1 << bits) - 1)
    return out.reshape(rows, cols)


def _pack_field(q: np.ndarray, unit: int, shift: int, width: int) -> np.ndarray:
    """Codes (rows, colsp) in element order -> one plane of bits [shift, shift+width) in kernel order.

    Kernel order: unit u, chunk c, lane j holds element u*U + j*S + c (S = U/32).
    A 32-byte vector packs 8/width chunks; chunk k of vector v (c = v*per + k)
    sits at bits width*k of each byte.
    """
    rows, colsp = q.shape
    s, per = unit // 32, 8 // width
    q5 = q.reshape(rows, colsp // unit, 32, s // per, per)  # [.., j, v, k] = element j*S + v*per + k
    mask = (1 << width) - 1
    acc = np.zeros(q5.shape[:4], np.uint8)
    for k in range(per):
        acc |= ((q5[..., k] >> shift) & mask) << (width * k)
    return np.ascontiguousarray(acc.transpose(0, 1, 3, 2)).reshape(rows, -1)  # [.., v, j]


def repack_affine(qtype: str, codes, scales, biases, rows: int, cols: int):
    """MLX affine (codes, f16 scales, f16 biases) -> (planes, colsp)."""
    bits, group = parse_affine(qtype)
    unit = AFFINE_UNIT[bits]
    if scales is None or biases is None:
        raise FormatError(f"{qtype} weight without its .scales/.biases tensors; the file is incomplete")
    raw = np.frombuffer(codes, np.uint8) if not isinstance(codes, np.ndarray) else codes.reshape(-1).view(np.uint8)
    if cols % group or raw.size != rows * cols * bits // 8:
        raise FormatError(f"{qtype} weight ({rows}x{cols}) has {raw.size} code bytes, "
                          f"expected {rows * cols * bits // 8}; the file is corrupt")
    raw = raw.reshape(rows, cols * bits // 8)
    ng = cols // group
    sc = np.asarray(scales).reshape(-1).view(np.float16).reshape(rows, ng)
    bi = np.asarray(biases).reshape(-1).view(np.float16).reshape(rows, ng)
    colsp = -(-cols // unit) * unit
    ngp = -(-(colsp // group) // PAD_GROUPS) * PAD_GROUPS
    sc = np.pad(sc, ((0, 0), (0, ngp - ng)))
    bi = np.pad(bi, ((0, 0), (0, ngp - ng)))
    if bits in (2, 4, 8) and colsp == cols:
        return _planes(raw, None, sc, bi), colsp  # MLX's stream is already the plane (module doc)
    q = _mlx_codes(raw, bits, cols)
    if colsp != cols:
        q = np.pad(q, ((0, 0), (0, colsp - cols)))
    if bits == 8:
        return _planes(q, None, sc, bi), colsp
    low = min(bits, 4 if bits >= 4 else 2)  # 2, 3 -> crumb low plane; 4, 5, 6 -> nibble low plane
    p0 = _pack_field(q, unit, 0, low)
    p1 = _pack_field(q, unit, low, bits - low) if bits > low else None
    return _planes(p0, p1, sc, bi), colsp


assert QK_K == 256  # the plane layouts above are drawn for 256-weight super-blocks
