"""llama.cpp's 32-wide block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL (the grouped body).

Every block (32 weights, one f16 d) is one group; the stored formulas
(ggml-common.h, gguf-py's dequantizers) and how the kernel runs them:

    Q4_0   w = d * (q - 8)       q 4-bit   bias -8 d   (through the activation block sums)
    Q4_1   w = d * q + m         q 4-bit   bias m
    Q5_0   w = d * (q - 16)      q 5-bit   bias -16 d
    Q5_1   w = d * q + m         q 5-bit   bias m
    Q8_0   w = d * q             q int8    signed codes (vpsignb), no bias
    IQ4_NL w = d * kv[q]         q 4-bit   kv: 16 int8 values, looked up with one vpshufb; signed

Planes.  A row's first 256*(cols // 256) elements are units of 8 blocks in a
stride-8 interleave (chunk c, lane j = element 8j + c of the unit), so lane
group l of every chunk is block l and all 8 chunks of a unit add up in the
integer domain before one int->float and one fma (coefficients d_l * dx_l
for the 8 blocks: one vector).  The rest (cols % 256, whole blocks) is a
tail in stored order, one block per unit:

    p0  4-bit: nib plane, 128 B per unit (chunks 2v | 2v+1 in vector v); tail: blocks 2v | 2v+1 per 32 B
        8-bit: 256 B per unit (chunk c = bytes 32c..32c+31); tail: 32 B per block
    p1  5-bit only: bit plane, 32 B per unit (bit c = 5th bit of chunk c); tail: 32 B (bit k = tail block k)
    p2  d f16 per block, p3 m f16 per block (Q4_1, Q5_1); zero-padded to a multiple of 8 blocks

Inner loop (Q4_0, T = 1), as read from the generated assembly (numba
inspect_asm, host target znver5): 34 instructions per unit of 8 blocks (256
weights, 144 bytes): 4 vmovdqu of codes, 4 vpand (low nibbles) and 4
vgf2p8affineqb (LLVM's GFNI form of the byte shift right by 4; vpsrlw + vpand
on plain AVX2), 8 vpmaddubsw taking the activations as memory operands, 7
vpaddw (i16 sums: 8 x 2 x 15 x 127 < 2^15), one vpmaddwd by ones, vcvtdq2ps,
vcvtph2ps of the 8 d's, vmulps by the 8 activation scales, one vfmadd231ps, and
the loop counter.  Q5: + one bit-plane load and a shift/and/or per chunk, the
i16 sums in two halves.  8-bit / IQ4_NL: vpabsb + vpsignb + vpmaddubsw +
vpmaddwd per chunk (IQ4_NL: + one vpshufb), i32 adds.  The bias term (-8 d,
-16 d or m times the activation block sums) runs once per row, 8 blocks per
vector.
"""
from __future__ import annotations

import sys

import numpy as np

from ..blocks import legacy_codes
from . import grouped
from . import planes as pl
from .emit import F32, I8, I32, E, V
from .spec import Spec, register

FAMILY = "q32"
TILED_BLOCKS = True  # prompts run on decoded row tiles (tiled.py: codes, fam.deq_int, bias8, tail_codes)
UNIT, STRIDE = 256, 8
_BITS = {"Q4_0": 4, "Q4_1": 4, "Q5_0": 5, "Q5_1": 5, "Q8_0": 8, "IQ4_NL": 4}
_OFFSET = {"Q4_0": 8, "Q5_0": 16}  # w = d * (q - offset)
_MIN = ("Q4_1", "Q5_1")  # w = d * q + m
_SIGNED = ("Q8_0", "IQ4_NL")


def specs():
    return [Spec(n, FAMILY, b, UNIT, 32, 32, 32, stride=STRIDE, signed=n in _SIGNED) for n, b in _BITS.items()]


# ----------------------------------------------------------------------------- repack (numpy, at load)
def _tail_planes(t: np.ndarray, bits: int):
    """Tail codes (rows, tb, 32) -> (p0 bytes, p1 bytes) in stored order (module doc)."""
    rows, tb, _ = t.shape
    if bits == 8:
        return t.reshape(rows, -1), None
    low = t & 0x0F
    if tb % 2:
        low = np.concatenate([low, np.zeros((rows, 1, 32), np.uint8)], axis=1)
    p0 = (low[:, 0::2] | (low[:, 1::2] << 4)).reshape(rows, -1)
    if bits == 4:
        return p0, None
    p1 = np.zeros((rows, 32), np.uint8)
    for k in range(tb):
        p1 |= ((t[:, k] >> 4) & 1) << k
    return p0, p1


def _repack_rows(f: dict, name: str, bits: int) -> tuple[np.ndarray, ...]:
    """Block fields of some rows -> their five planes (module doc)."""
    rows, nb = f["d"].shape[:2]
    nm = nb // 8 * 8  # blocks in whole units
    q = legacy_codes(f, name)  # (rows, nb, 32) element order
    main = q[:, :nm].reshape(rows, nm * 32)
    p0 = pl.pack_field(main, UNIT, 0, 8 if bits == 8 else 4)
    p1 = pl.pack_field(main, UNIT, 4, 1) if bits == 5 else None
    if nm < nb:
        t0, t1 = _tail_planes(q[:, nm:], bits)
        p0 = np.concatenate([p0, t0], axis=1)
        if t1 is not None:
            p1 = np.concatenate([p1, t1], axis=1)
    d = pl.pad_groups(f["d"].reshape(rows, nb * 2).view(np.float16), nb)
    m = pl.pad_groups(f["m"].reshape(rows, nb * 2).view(np.float16), nb) if name in _MIN else None
    return pl.planes(p0, p1, d, m)


def repack(spec: Spec, data, rows: int, cols: int, scales=None, biases=None):
    b = pl.blocks(data, spec.name, rows, cols)
    planes = pl.by_rows(rows, cols, lambda r0, r1: _repack_rows(pl.fields(b[r0:r1], spec.name), spec.name, spec.bits))
    return planes, cols


x_widths = grouped.x_widths
x_order = grouped.x_order


# ----------------------------------------------------------------------------- decoding (LLVM IR)
def _lookup(spec: Spec, e: E, q):
    if spec.name != "IQ4_NL":
        return q
    from ...quants.iq4 import KVALUES  # at compile time only

    return e.lut16(KVALUES, q)


def codes(spec: Spec, e: E, P, u):
    """Unit u (8 blocks, interleaved): 8 chunk code vectors."""
    if spec.bits == 8:
        return [e.ld(P[0], e.add(e.mul(u, 256), 32 * c), V(I8, 32)) for c in range(8)]
    out = [e.nib(P[0], e.add(e.mul(u, 128), 32 * (c // 2)), c % 2) for c in range(8)]
    if spec.bits == 5:
        hb = e.ld(P[1], e.mul(u, 32), V(I8, 32))
        out = [e.b.or_(q, e.bits_at(hb, c, 1, 4)) for c, q in enumerate(out)]
    return [_lookup(spec, e, q) for q in out]


def tail_unit(spec: Spec):
    return 32, 1  # one block per tail unit, stored order


def tail_codes(spec: Spec, e: E, P, nblk, i):
    """Tail block i (after nblk whole units): one code vector."""
    b = e.b
    if spec.bits == 8:
        return [e.ld(P[0], e.add(e.mul(nblk, 256), e.mul(i, 32)), V(I8, 32))]
    v = e.ld(P[0], e.add(e.mul(nblk, 128), e.mul(b.lshr(i, e.i(1)), 32)), V(I8, 32))
    q = b.and_(e.shr_var(v, e.mul(b.and_(i, e.i(1)), 4)), e.k(v.type, 15))
    if spec.bits == 5:
        hb = e.ld(P[1], e.mul(nblk, 32), V(I8, 32))
        q = b.or_(q, b.shl(b.and_(e.shr_var(hb, i), e.k(hb.type, 1)), e.k(hb.type, 4)))
    return [_lookup(spec, e, q)]


def has_bias(spec: Spec) -> bool:
    return not spec.signed


def stored_bias(spec: Spec) -> bool:
    return spec.name in _MIN


def bias8(spec: Spec, e: E, P, g8):
    """<8 x float> biases of blocks g8..g8+7: m, or -offset * d."""
    if spec.name in _MIN:
        return e.halves(P[3], e.mul(g8, 2), 8)
    return e.b.fmul(e.halves(P[2], e.mul(g8, 2), 8), e.k(V(F32, 8), -float(_OFFSET[spec.name])))


def deq_int(spec: Spec, e: E, q):
    """Integer value the scale multiplies (gguf-py's order: d * (q - offset), d * q + m, d * kv[q])."""
    v = grouped.i32_of(spec, e, q)
    off = _OFFSET.get(spec.name)
    return e.b.sub(v, e.k(V(I32, 32), off)) if off else v


def row_body(spec: Spec, e: E, P, X, T, ncols):
    return grouped.row_body(spec, e, P, X, T, ncols, sys.modules[__name__])


def deq_body(spec: Spec, e: E, P, out, ncols):
    grouped.deq_body(spec, e, P, out, ncols, sys.modules[__name__])


register(FAMILY, sys.modules[__name__], specs())
