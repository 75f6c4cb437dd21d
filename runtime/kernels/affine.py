"""MLX affine weights AFFINE{b}_G{g} (w = s*q + b, f16 s and b per group): the grouped body.

The kernel walks "units" of U = 32*S elements whose chunk c, lane j holds
element j*S + c of the unit (a stride-S interleave; the activations are
permuted the same way).  With that order MLX's own bit stream is already a
plane for 2, 4 and 8 bits, so those codes are used in place (no copy):

    b=2  U=128  p0 = MLX words: byte j of a unit = elements 4j..4j+3 = crumb plane
    b=4  U=64   p0 = MLX words: byte j = elements 2j (low nibble), 2j+1 = nib plane
    b=8  U=32   p0 = MLX bytes, identity order
    b=3  U=256  p0 crumb (64 B/unit, low 2 bits)  p1 bit (32 B/unit, bit 2)
    b=5  U=256  p0 nib (128 B/unit, low 4 bits)   p1 bit (32 B/unit, bit 4)
    b=6  U=128  p0 nib (64 B/unit, low 4 bits)    p1 crumb (32 B/unit, bits 4-5)
    p2 scales f16, p3 biases f16, per group, padded with zeros to a multiple of 8 groups

Rows whose length is not a multiple of the unit are zero-padded (copy).
8-bit codes run as signed (code - 128) with the bias raised by 128 s.
"""
from __future__ import annotations

import sys

import numpy as np

from ...errors import FormatError
from ...tables import AFFINE_BITS, AFFINE_GROUPS, affine_name, parse_affine
from . import grouped
from . import planes as pl
from .emit import I8, I32, E, V
from .spec import Spec, register

FAMILY = "aff"
UNIT = {2: 128, 3: 256, 4: 64, 5: 256, 6: 128, 8: 32}  # bits -> unit length U (elements); stride S = U // 32


def specs():
    out = []
    for bits in AFFINE_BITS:
        for g in AFFINE_GROUPS:
            u = UNIT[bits]
            out.append(Spec(affine_name(bits, g), FAMILY, bits, u, g, g, g, stride=u // 32, signed=bits == 8))
    return out


# ----------------------------------------------------------------------------- repack (numpy, at load)
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


def repack(spec: Spec, data, rows: int, cols: int, scales=None, biases=None):
    """MLX affine (codes, f16 scales, f16 biases) -> (planes, colsp)."""
    bits, group = parse_affine(spec.name)
    unit = UNIT[bits]
    if scales is None or biases is None:
        raise FormatError(f"{spec.name} weight without its .scales/.biases tensors; the file is incomplete")
    raw = pl.as_bytes(data)
    if cols % group or raw.size != rows * cols * bits // 8:
        raise FormatError(f"{spec.name} weight ({rows}x{cols}) has {raw.size} code bytes, "
                          f"expected {rows * cols * bits // 8}; the file is corrupt")
    raw = raw.reshape(rows, cols * bits // 8)
    ng = cols // group
    colsp = -(-cols // unit) * unit
    sc = pl.pad_groups(np.asarray(scales).reshape(-1).view(np.float16).reshape(rows, ng), colsp // group)
    bi = pl.pad_groups(np.asarray(biases).reshape(-1).view(np.float16).reshape(rows, ng), colsp // group)
    if bits in (2, 4, 8) and colsp == cols:
        return pl.planes(raw, None, sc, bi), colsp  # MLX's stream is already the plane (module doc)
    q = _mlx_codes(raw, bits, cols)
    if colsp != cols:
        q = np.pad(q, ((0, 0), (0, colsp - cols)))
    if bits == 8:
        return pl.planes(q, None, sc, bi), colsp
    low = min(bits, 4 if bits >= 4 else 2)  # 2, 3 -> crumb low plane; 4, 5, 6 -> nibble low plane
    p0 = pl.pack_field(q, unit, 0, low)
    p1 = pl.pack_field(q, unit, low, bits - low) if bits > low else None
    return pl.planes(p0, p1, sc, bi), colsp


x_widths = grouped.x_widths
x_order = grouped.x_order


# ----------------------------------------------------------------------------- decoding (LLVM IR)
def codes(spec: Spec, e: E, P, u):
    """Unit u of a row: S chunk code vectors (kernel order, module doc)."""
    b, bits, p0, p1 = e.b, spec.bits, P[0], P[1]
    S = spec.stride
    if bits == 8:
        q = e.ld(p0, e.mul(u, 32), V(I8, 32))
        return [b.xor(q, e.k(q.type, 0x80))]  # u8 -> u8 - 128 (the bias absorbs +128 s)
    if bits == 2:
        return [e.crumb(p0, e.mul(u, 32), c) for c in range(S)]
    if bits == 4:
        return [e.nib(p0, e.mul(u, 32), c) for c in range(S)]
    if bits == 3:
        return [b.or_(e.crumb(p0, e.add(e.mul(u, 64), 32 * (c // 4)), c % 4), e.bit(p1, e.mul(u, 32), c, 2))
                for c in range(S)]
    if bits == 5:
        return [b.or_(e.nib(p0, e.add(e.mul(u, 128), 32 * (c // 2)), c % 2), e.bit(p1, e.mul(u, 32), c, 4))
                for c in range(S)]
    if bits == 6:
        return [b.or_(e.nib(p0, e.add(e.mul(u, 64), 32 * (c // 2)), c % 2), e.crumb(p1, e.mul(u, 32), c, pos=4))
                for c in range(S)]
    raise AssertionError(bits)


def tail_unit(spec: Spec):
    """(elements, stride) of the tail units: the same units (rows are padded to whole units)."""
    return spec.unit, spec.stride


def tail_codes(spec: Spec, e: E, P, nblk, i):
    return codes(spec, e, P, e.add(e.mul(nblk, 8 * spec.group // spec.unit), i))


def has_bias(spec: Spec) -> bool:
    return True


def stored_bias(spec: Spec) -> bool:
    """Dequantization adds the biases of plane p3."""
    return True


def deq_int(spec: Spec, e: E, q):
    if spec.bits == 8:
        q = e.b.xor(q, e.k(q.type, 0x80))  # undo the kernel's shift
    return e.b.zext(q, V(I32, 32))


def bias8(spec: Spec, e: E, P, g8):
    """<8 x float> biases of groups g8..g8+7 (8-bit: b + 128 s, for the signed codes)."""
    bias = e.halves(P[3], e.mul(g8, 2), 8)
    if spec.bits == 8:
        bias = e.fma(e.halves(P[2], e.mul(g8, 2), 8), e.k(bias.type, 128.0), bias)
    return bias


def row_body(spec: Spec, e: E, P, X, T, ncols):
    return grouped.row_body(spec, e, P, X, T, ncols, sys.modules[__name__])


def deq_body(spec: Spec, e: E, P, out, ncols):
    grouped.deq_body(spec, e, P, out, ncols, sys.modules[__name__])


register(FAMILY, sys.modules[__name__], specs())
