"""The shared row body of the 256-weight super-block families (k-quants, IQ4_XS, lattice, ternary).

A family decodes super-block `sb` of a row into a `Block` (`block(spec, e, P, sb)`):

    codes   8 chunk code vectors <32 x i8> (unsigned, or signed when spec.signed)
    scales  8 <16 x i16> integer scales, one per i16 pair lane (or None: all ones), or
    scale_all  one <16 x i16> for every chunk (interleaved layouts: lane m is the same group
            in all chunks, so the chunks add up in i16 first and meet the scales once)
    xsigns  8 <32 x i8> sign vectors applied to the activations (vpsignb) before the
            product (lattice types keep magnitudes as codes and signs apart), or None
    d       float: the super-block's scale of the integer sum
    mins    <G x float> per activation sum group and dmin: w gets  - dmin * min_g  (or None)

and the body accumulates, per activation t (int8 per 256 with one scale dx,
float sums per `spec.sgroup` for the min terms, like ggml's Q8_K):

    acc += (d * dx) * float(sum_c vpmaddwd(dot(codes_c, x_c), scales_c))  -  dmin * (mins . xsum)

dot = vpmaddubsw (signed codes: vpabsb + vpsignb + vpmaddubsw).  Without
per-chunk scales, the i16 pair sums are added while they cannot overflow and
widened once per partial sum (vpmaddwd by `scale_all`, or by ones).  The codes are decoded once per super-block for all
TMAX activations of a batched pass.
"""
from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir
from numba.core import cgutils

from ...tables import QK_K
from .emit import F32, I8, E, V
from .rows import Acc, over_t, row_x
from .spec import Spec


@dataclass
class Block:
    """One decoded super-block (see the module docstring)."""

    codes: list
    d: object
    scales: list | None = None
    scale_all: object = None
    xsigns: list | None = None
    mins: object = None
    dmin: object = None


def x_widths(spec: Spec, colsp: int, planes):
    """(xq, xd, xs) widths: one int8 per element, one scale per 256, one sum per sgroup."""
    return colsp, colsp // spec.xblk, colsp // spec.sgroup


def _code_bound(spec: Spec) -> int:
    """Largest |code| the family emits (bounds the i16 sums)."""
    return 128 if spec.signed else (1 << spec.bits) - 1


def _isum(spec: Spec, e: E, blk: Block, xqt, sb):
    """<8 x i32> sum over the 8 chunks of (code . x) pair sums, times the chunk scales."""
    b = e.b
    isum, part, n_part = None, None, 0
    budget = max(1, 32767 // (2 * _code_bound(spec) * 127))
    for c in range(8):
        x8 = e.ld(xqt, e.add(e.mul(sb, QK_K), 32 * c), V(I8, 32))
        if blk.xsigns is not None:
            x8 = e.sign(x8, blk.xsigns[c])
        p = e.sign_dot(blk.codes[c], x8) if spec.signed else e.maddubs(blk.codes[c], x8)
        if blk.scales is not None:
            v = e.madd(p, blk.scales[c])
            isum = v if isum is None else b.add(isum, v)
            continue
        part = p if part is None else b.add(part, p)
        n_part += 1
        if n_part == budget or c == 7:
            w = e.pair_sum16(part) if blk.scale_all is None else e.madd(part, blk.scale_all)
            isum = w if isum is None else b.add(isum, w)
            part, n_part = None, 0
    return isum


def row_body(spec: Spec, e: E, P, X, T, ncols, fam):
    """Emit the row's accumulation (fam.block decodes a super-block); returns finish(t)."""
    b = e.b
    xq, xqs, xd, xds, xs, xss = X
    acc = Acc(e, spec, 1, T)
    G = QK_K // spec.sgroup

    with cgutils.for_range(b, b.udiv(ncols, e.i(QK_K))) as loop:
        sb = loop.index
        blk = fam.block(spec, e, P, sb)

        def step(t):
            isum = _isum(spec, e, blk, row_x(e, xq, xqs, t), sb)
            a = acc.get(t)
            if blk.mins is not None:
                mx = b.fmul(blk.mins, e.ld(row_x(e, xs, xss, t), e.mul(sb, 4 * G), V(F32, G)))
                if G == 16:
                    mx = b.fadd(e.shuf(mx, range(8)), e.shuf(mx, range(8, 16)))
                a = e.fma(e.splat(b.fsub(ir.Constant(F32, 0.0), blk.dmin)), mx, a)
            dx = e.ld(row_x(e, xd, xds, t), e.mul(sb, 4), F32)
            acc.put(t, e.fma(e.splat(b.fmul(blk.d, dx)), e.cvt(isum), a))

        over_t(spec, e, T, step)

    return lambda t: e.hsum(acc.get(t))


def deq_body(spec: Spec, e: E, P, out, ncols, fam):
    """Per super-block, the family's exact dequantization: fam.deq_block(spec, e, P, sb, store)
    with store(chunk c, <32 x float>) writing elements 32c.. of the super-block."""
    with cgutils.for_range(e.b, e.b.udiv(ncols, e.i(QK_K))) as loop:
        sb = loop.index

        def store(c, w, sb=sb):
            e.st(out, e.mul(e.add(e.mul(sb, QK_K), 32 * c), 4), w)

        fam.deq_block(spec, e, P, sb, store)
