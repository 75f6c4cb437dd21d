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
    scale32 <8 x i32>: scale_all per i32 lane, where the 4 bytes of each lane share one scale
            in every chunk (Q4_K, Q5_K; lets the 512-bit pass use vpdpbusd), or None
    offset  int: when set, the min term is only a code offset (min_g = offset * scale_g, dmin = d):
            codes - offset are the signed codes (Q6_K, Q3_K, IQ1, ternary; read by tiled.py)

and the body accumulates, per activation t (int8 per 256 with one scale dx,
float sums per `spec.sgroup` for the min terms, like ggml's Q8_K):

    acc += (d * dx) * float(sum_c vpmaddwd(dot(codes_c, x_c), scales_c))  -  dmin * (mins . xsum)

dot = vpmaddubsw (signed codes: vpabsb + vpsignb + vpmaddubsw).  Without
per-chunk scales, the i16 pair sums are added while they cannot overflow and
widened once per partial sum (vpmaddwd by `scale_all`, or by ones).  The codes are decoded once per super-block for all
TMAX activations of a batched pass.

Batched kernels on AVX-512BW hosts (`Wide`, emit.USE_AVX512) join chunks 2k and
2k + 1 into one <64 x i8> once per super-block and run each dot step on two
chunks at once against the 64 adjacent activation bytes; signs become masked
negations of x (there is no 512-bit vpsignb), and the <16 x i32> sums fold back
to the same <8 x i32> integers, so the results are bit-identical.  Where the
4 bytes of each i32 lane share one scale (Q4_K, Q5_K, ternary) and the host has
AVX512-VNNI, vpdpbusd replaces vpmaddubsw + vpaddw + vpmaddwd.  Per activation
and super-block (Q4_K, host target znver5, read from the assembly): 4 vpdpbusd
with the activations as memory operands, vextracti64x4 + vpaddd, one vpmulld by
the scales, then the same float steps as on 256 bits: 19 instructions with the
loop's, from 27 (8 vpmaddubsw, 7 vpaddw, vpmaddwd); 4 vinserti64x4 more per
super-block.  Prefill kernel (512 x 2048 by 5632 x 2048, 2 threads, Zen 5),
256 -> 512 bits: Q4_K 1.30x, Q5_K 1.26x, Q6_K 1.32x, Q3_K 1.21x, IQ4_XS 1.45x,
IQ2_XXS 1.41x, IQ3_S 1.30x, TQ2_0 1.30x (with vpmaddubsw instead of vpdpbusd:
Q4_K 1.07x, TQ2_0 1.16x); 512-token prefill of a Q4_K TinyLlama 164 -> 203 tok/s.
"""
from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir
from numba.core import cgutils

from ...tables import QK_K
from .emit import F32, I8, E, V
from .rows import Acc, over_t, row_x, sum_products
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
    scale32: object = None
    offset: int = 0


def x_widths(spec: Spec, colsp: int, planes):
    """(xq, xd, xs) widths: one int8 per element, one scale per 256, one sum per sgroup."""
    return colsp, colsp // spec.xblk, colsp // spec.sgroup


def _isum(spec: Spec, e: E, blk: Block, xqt, sb):
    """<8 x i32> sum over the 8 chunks of (code . x) pair sums, times the chunk scales."""
    prods = []
    for c in range(8):
        x8 = e.ld(xqt, e.add(e.mul(sb, QK_K), 32 * c), V(I8, 32))
        if blk.xsigns is not None:
            x8 = e.sign(x8, blk.xsigns[c])
        prods.append(e.sign_dot(blk.codes[c], x8) if spec.signed else e.maddubs(blk.codes[c], x8))
    return sum_products(spec, e, prods, blk.scales, blk.scale_all)


@dataclass
class Wide:
    """A Block joined for the 512-bit pass (batched kernels on AVX-512BW hosts), once per
    super-block: pair k holds chunks 2k (low 256 bits) and 2k + 1 (high), matching the 64
    activation bytes at 64k.  Every x86 dot step works within 128-bit lanes, so a <16 x i32>
    result holds chunk 2k's <8 x i32> in lanes 0-7 and 2k + 1's in lanes 8-15:

        codes   4 <64 x u8>   (|codes| when signed)
        neg     4 <64 x i1>   activation lanes to negate (negative code or x-sign), or None
        scales  4 <32 x i16>  the chunk pair's scales, or None;  scale_all <32 x i16> or None
        dot4    vpdpbusd sums of 4 bytes straight to i32 (then times scale32, if any)
    """

    codes: list
    neg: list | None
    scales: list | None
    scale_all: object
    dot4: bool
    scale32: object


def _widen(spec: Spec, e: E, blk: Block) -> Wide:
    """The super-block's operands for `_isum_wide`, joined in pairs of chunks."""
    codes, neg = e.pairs(blk.codes), None
    if spec.signed:  # |w| . (x * sign(w)), as vpabsb + vpsignb do on 256 bits
        neg, codes = [e.below0(q) for q in codes], [e.abs8(q) for q in codes]
    if blk.xsigns is not None:
        xneg = [e.below0(s) for s in e.pairs(blk.xsigns)]
        neg = xneg if neg is None else [e.b.xor(a, c) for a, c in zip(neg, xneg)]
    scales = None if blk.scales is None else e.pairs(blk.scales)
    scale_all = None if blk.scale_all is None else e.cat(blk.scale_all, blk.scale_all)
    dot4 = e.vnni512 and neg is None and scales is None and (scale_all is None or blk.scale32 is not None)
    return Wide(codes, neg, scales, scale_all, dot4, blk.scale32)


def _isum_wide(spec: Spec, e: E, w: Wide, xqt, sb):
    """`_isum` two chunks per instruction: the same <8 x i32> integers (exact, and no i16 lane adds
    up more chunks than `rows.i16_budget` allows), from 4 instead of 8 dot steps."""
    isum, prods = None, []
    for k in range(4):
        x8 = e.ld(xqt, e.add(e.mul(sb, QK_K), 64 * k), V(I8, 64))
        if w.neg is not None:
            x8 = e.negate_where(w.neg[k], x8)
        if w.dot4:
            isum = e.dpbusd(isum, w.codes[k], x8)
        else:
            prods.append(e.maddubs(w.codes[k], x8))
    if not w.dot4:
        return e.fold(sum_products(spec, e, prods, w.scales, w.scale_all))
    isum = e.fold(isum)
    return isum if w.scale32 is None else e.b.mul(isum, w.scale32)


def row_body(spec: Spec, e: E, P, X, T, ncols, fam):
    """Emit the row's accumulation (fam.block decodes a super-block); returns finish(t)."""
    b = e.b
    xq, xqs, xd, xds, xs, xss = X
    acc = Acc(e, spec, 1, T)
    G = QK_K // spec.sgroup

    with cgutils.for_range(b, b.udiv(ncols, e.i(QK_K))) as loop:
        sb = loop.index
        blk = fam.block(spec, e, P, sb)
        wide = _widen(spec, e, blk) if spec.batched and e.avx512 else None

        def step(t):
            xqt = row_x(e, xq, xqs, t)
            isum = _isum(spec, e, blk, xqt, sb) if wide is None else _isum_wide(spec, e, wide, xqt, sb)
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
