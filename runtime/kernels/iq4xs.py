"""IQ4_XS: 256-weight super-blocks of IQ4_NL's non-linear 4-bit codes with 6-bit sub-block scales.

    w = d * (ls_j - 32) * kv[q]       j = the 32-weight sub-block, kv = IQ4_NL's 16 int8 values

The kernel runs on the stored blocks in place (p0 = the row's raw 136-byte
blocks, field offsets from `tables.GGML_FIELDS`; nothing is copied at load):

    d f16 | scales_h u16 (2 high bits of ls_j at bits 2j) | scales_l 4 B (low nibbles) | qs 128 B

qs bytes 16j..16j+15 hold sub-block j: low nibble = element i, high = i + 16.
A 32-byte load at qs + 32k therefore gives, after `& 15` / `>> 4`, two chunks
whose 128-bit halves are sub-blocks 2k and 2k+1: the kernel order (and the
activations' order, `x_order`) is, per pair of sub-blocks, [2k: 0-15 | 2k+1: 0-15]
then [2k: 16-31 | 2k+1: 16-31], so each chunk's integer scales are one in-lane
broadcast of the two sub-blocks' (ls - 32).

Inner loop per super-block, as read from the generated assembly (host target
znver5): about 75 instructions per 256 weights: 4 loads of codes, 4 vpandq +
4 vgf2p8affineqb (nibbles), 8 vpshufb table lookups (kv), 8 x (vpabsb,
vpsignb, vpmaddubsw) with 8 activation loads, the scale decode (vmovd,
vpshufb, two vpsrlvw, vpsllw, vpandq, vpternlogq, vpaddw: ~10), 4 vpermw
broadcasting the sub-block scale pairs, one vpmaddwd and 7 vpdpwssd (LLVM
fuses vpmaddwd + vpaddd where AVX512-VNNI exists), then one int->float and
one fma by d * dx (superblock.py).
"""
from __future__ import annotations

import sys

import numpy as np

from ...tables import QK_K, block_fields, quant_info
from . import planes as pl
from . import superblock
from .emit import F16, F32, I8, I16, I32, E, V
from .spec import Spec, register
from .superblock import Block

FAMILY = "iq4xs"
_F = block_fields("IQ4_XS")
_BB = quant_info("IQ4_XS").block_bytes


def specs():
    return [Spec("IQ4_XS", FAMILY, 4, QK_K, 32, QK_K, 32, signed=True)]


def scale_groups(spec: Spec) -> list[int]:
    """The sub-block of each 16-byte run j (half j % 2 of chunk j // 2; tiled.py)."""
    return [2 * (j // 4) + j % 2 for j in range(16)]


def repack(spec: Spec, data, rows: int, cols: int, scales=None, biases=None):
    return pl.planes(pl.blocks(data, spec.name, rows, cols).reshape(rows, -1)), cols  # in place


x_widths = superblock.x_widths


def x_order(spec: Spec):
    """Kernel position 64k + 32h + 16s + i <- element 32(2k + s) + 16h + i (module doc)."""
    k, h, s, i = np.meshgrid(np.arange(4), np.arange(2), np.arange(2), np.arange(16), indexing="ij")
    return (32 * (2 * k + s) + 16 * h + i).reshape(-1)


def _scales(e: E, p0, base):
    """<8 x i16> of ls_j - 32 for the super-block at byte `base`."""
    b = e.b
    sl = e.ld(p0, e.add(base, _F["scales_l"].start), V(I8, 4))
    lo = b.zext(e.shuf(sl, [0, 0, 1, 1, 2, 2, 3, 3]), V(I16, 8))
    lo = b.and_(b.lshr(lo, e.vec(V(I16, 8), [0, 4] * 4)), e.k(V(I16, 8), 15))
    sh = e.splat(e.ld(p0, e.add(base, _F["scales_h"].start), I16), 8)
    hi = b.shl(b.and_(b.lshr(sh, e.vec(V(I16, 8), range(0, 16, 2))), e.k(V(I16, 8), 3)), e.k(V(I16, 8), 4))
    return b.sub(b.or_(lo, hi), e.k(V(I16, 8), 32))


def _decode(spec: Spec, e: E, P, sb):
    """(codes: 8 signed <32 x i8> in kernel order, ls - 32 as <8 x i16>, d float)."""
    from ...quants.iq4 import KVALUES  # at compile time only: cached starts skip it

    kv = KVALUES

    b, p0 = e.b, P[0]
    base = e.mul(sb, _BB)
    codes = []
    for k in range(4):
        v = e.ld(p0, e.add(base, _F["qs"].start + 32 * k), V(I8, 32))
        codes += [e.lut16(kv, b.and_(v, e.k(v.type, 15))), e.lut16(kv, b.lshr(v, e.k(v.type, 4)))]
    d = b.fpext(e.ld(p0, e.add(base, _F["d"].start), F16), F32)
    return codes, _scales(e, p0, base), d


def block(spec: Spec, e: E, P, sb) -> Block:
    codes, sc, d = _decode(spec, e, P, sb)
    scales = [e.shuf(sc, [2 * (c // 2)] * 8 + [2 * (c // 2) + 1] * 8) for c in range(8)]
    return Block(codes, d, scales=scales)


def deq_block(spec: Spec, e: E, P, sb, store):
    """gguf-py's order: dl_j = d * float(ls_j - 32), w = dl_j * float(kv[q])."""
    b = e.b
    codes, sc, d = _decode(spec, e, P, sb)
    dl = b.fmul(e.splat(d, 8), b.sitofp(sc, V(F32, 8)))
    for c in range(8):
        j = 2 * (c // 2)
        w = b.fmul(e.shuf(dl, [j] * 16 + [j + 1] * 16), b.sitofp(b.sext(codes[c], V(I32, 32)), V(F32, 32)))
        store(c, w)


def row_body(spec: Spec, e: E, P, X, T, ncols):
    return superblock.row_body(spec, e, P, X, T, ncols, sys.modules[__name__])


def deq_body(spec: Spec, e: E, P, out, ncols):
    superblock.deq_body(spec, e, P, out, ncols, sys.modules[__name__])


register(FAMILY, sys.modules[__name__], specs())
