"""The shared row body of the "one float scale per small group" families (affine, legacy 32-wide).

A row is a sequence of *units* of U = 32*S elements in a stride-S interleave
(chunk c, lane j of a unit holds its element j*S + c; activations are permuted
the same way), decoded by the family's `codes(spec, e, P, u)` into S chunk
code vectors <32 x i8>.  Rows may end in a *tail* of smaller units (the
family's `tail_unit`), decoded by `tail_codes(spec, e, P, nblk, i)`.  Plane p2
holds one f16 scale per group of `spec.group` elements; when
`has_bias(spec)`, the family's `bias8(spec, e, P, g8)` gives the per-group bias
of 8 groups from g8 on.  `spec.signed`: the kernel codes are signed int8.
Activations are int8 per group with float sums per group:

    y = sum_g s_g * dx_g * (codes_g . xq_g)  +  sum_g b_g * xsum_g

Inner loop, per unit and activation: vpmaddubsw per chunk (signed codes:
vpabsb + vpsignb + vpmaddubsw), chunk pair sums added in i16 while they cannot
overflow, widened by vpmaddwd with ones (with AVX-VNNI / AVX512-VNNI: one
vpdpbusd per chunk into i32 instead; batched kernels on AVX-512BW hosts: two
chunks per instruction, `_unit_isum_wide`), int -> float, and one fma by the
lanes' (scale x activation scale).  Blocks of NU units spanning exactly 8
groups share one <8 x float> of those coefficients (vcvtph2ps + vmulps), each
unit picking its lanes with one shuffle (the identity when S = 8 and groups
are 32: lane l of the sum *is* group l).  The bias term runs once per row
over the per-group sums.
"""
from __future__ import annotations

import numpy as np
from numba.core import cgutils

from . import planes as pl
from .emit import F16, F32, I8, I32, E, V
from .rows import Acc, add_all, over_t, row_x, sum_products
from .spec import Spec


def x_widths(spec: Spec, colsp: int, planes):
    """xq one per element, xd one scale per group, xs one sum per group (padded group count)."""
    nxs = max(planes[2].shape[1] // 2, colsp // spec.sgroup)
    return colsp, max(colsp // spec.xblk, nxs), nxs


def x_order(spec: Spec):
    """The stride-S interleave of a unit: chunk c, lane j holds element j*S + c (None when S = 1)."""
    S = spec.stride
    if S == 1:
        return None
    return np.arange(spec.unit).reshape(32, S).T.reshape(-1)


def _lane_groups(unit: int, stride: int, group: int, k: int = 0) -> list[int]:
    """For each i32 lane l of the dot vector of unit k of a block: its group, counted from the
    block's first group.  Lane l sums chunk lanes 4l..4l+3, elements k*U + (4l..4l+3)*S + c."""
    return [(k * unit + 4 * l * stride) // group for l in range(8)]


def _unit_isum(spec: Spec, e: E, x0, codes, xqt):
    """<8 x i32>: lane l = sum over the chunks' lanes 4l..4l+3 of code * x (unit at element x0)."""
    if e.vnni:
        return _unit_isum_vnni(spec, e, x0, codes, xqt)
    prods = []
    for c, q in enumerate(codes):
        x8 = e.ld(xqt, e.add(x0, 32 * c), V(I8, 32))
        prods.append(e.sign_dot(q, x8) if spec.signed else e.maddubs(q, x8))
    return sum_products(spec, e, prods)


def _unit_isum_vnni(spec: Spec, e: E, x0, codes, xqt):
    """With VNNI: one vpdpbusd per chunk (signed codes: vpabsb + vpsignb first) into 4 independent
    i32 accumulators (no vpmaddwd widening, no i16 overflow budget), summed at the end."""
    accs = [None] * 4
    for c, q in enumerate(codes):
        x8 = e.ld(xqt, e.add(x0, 32 * c), V(I8, 32))
        u8, s8 = (e.abs8(q), e.sign(x8, q)) if spec.signed else (q, x8)
        accs[c % 4] = e.dpbusd(accs[c % 4], u8, s8)
    return add_all(e, accs)


def _widen_unit(spec: Spec, e: E, codes):
    """A unit's chunk codes joined in pairs for the 512-bit pass (batched kernels on AVX-512BW
    hosts, once per unit): chunk 2j in the low 256 bits, 2j + 1 in the high ones, matching the 64
    activation bytes at 64j.  Signed codes become |codes| and a mask of the activation lanes to
    negate (there is no 512-bit vpsignb).  Returns (codes, masks or None)."""
    pairs = e.pairs(codes)
    if not spec.signed:
        return pairs, None
    return [e.abs8(q) for q in pairs], [e.below0(q) for q in pairs]


def _unit_isum_wide(spec: Spec, e: E, x0, wide, xqt):
    """`_unit_isum` two chunks per instruction: every x86 dot step works within 128-bit lanes, so
    lanes 0-7 of a <16 x i32> hold chunk 2j's sums and 8-15 chunk 2j + 1's; folding the halves gives
    the same <8 x i32> integers (vpdpbusd with AVX512-VNNI, else vpmaddubsw + budgeted i16 adds)."""
    codes, neg = wide
    accs, prods = [None, None], []
    for j, q in enumerate(codes):
        x8 = e.ld(xqt, e.add(x0, 64 * j), V(I8, 64))
        if neg is not None:
            x8 = e.negate_where(neg[j], x8)
        if e.vnni512:
            accs[j % 2] = e.dpbusd(accs[j % 2], q, x8)
        else:
            prods.append(e.maddubs(q, x8))
    return e.fold(add_all(e, accs) if e.vnni512 else sum_products(spec, e, prods))


def row_body(spec: Spec, e: E, P, X, T, ncols, fam):
    """Emit the row's accumulation (fam: the family module); returns finish(t)."""
    b = e.b
    xq, xqs, xd, xds, xs, xss = X
    acc = Acc(e, spec, 2, T)
    U, S, Gs = spec.unit, spec.stride, spec.group
    NU = 8 * Gs // U
    nblk = b.udiv(ncols, e.i(8 * Gs))
    with cgutils.for_range(b, nblk) as loop:
        blk = loop.index
        s8 = e.halves(P[2], e.mul(blk, 16), 8)
        units = [e.add(e.mul(blk, NU), k) for k in range(NU)]
        codes = [fam.codes(spec, e, P, u) for u in units]  # decoded once for all activations
        wide = [_widen_unit(spec, e, c) for c in codes] if spec.batched and e.avx512 and S % 2 == 0 else None

        def step(t):
            coef8 = b.fmul(s8, e.ld(row_x(e, xd, xds, t), e.mul(blk, 32), V(F32, 8)))
            xqt = row_x(e, xq, xqs, t)
            a = [acc.get(t, 0), acc.get(t, 1)]
            for k in range(NU):
                lanes = _lane_groups(U, S, Gs, k)
                coef = coef8 if lanes == list(range(8)) else e.shuf(coef8, lanes)
                x0 = e.mul(units[k], U)
                isum = _unit_isum(spec, e, x0, codes[k], xqt) if wide is None else \
                    _unit_isum_wide(spec, e, x0, wide[k], xqt)
                a[k % 2] = e.fma(coef, e.cvt(isum), a[k % 2])
            acc.put(t, a[0], 0)
            acc.put(t, a[1], 1)

        over_t(spec, e, T, step)
    _tail(spec, e, P, X, T, ncols, fam, acc, nblk)
    return lambda t: _finish(spec, e, P, X, ncols, fam, acc, t)


def _tail(spec: Spec, e: E, P, X, T, ncols, fam, acc, nblk):
    """Units of the row's last (< 8) groups, one coefficient lookup per unit."""
    b = e.b
    xq, xqs, xd, xds, _, _ = X
    TU, TS = fam.tail_unit(spec)
    Gs = spec.group
    x_start = e.mul(nblk, 8 * Gs)
    with cgutils.for_range(b, b.udiv(b.sub(ncols, x_start), e.i(TU))) as loop:
        i = loop.index
        codes = fam.tail_codes(spec, e, P, nblk, i)
        x0 = e.add(x_start, e.mul(i, TU))
        if TU >= Gs:
            g0, ng = b.udiv(x0, e.i(Gs)), TU // Gs
        else:
            g0, ng = b.udiv(x0, e.i(Gs)), 1

        def tstep(t, x0=x0, codes=codes, g0=g0, ng=ng):
            isum = _unit_isum(spec, e, x0, codes, row_x(e, xq, xqs, t))
            xdb = row_x(e, xd, xds, t)
            if ng == 1:
                s = b.fpext(e.ld(P[2], e.mul(g0, 2), F16), F32)
                coef = e.splat(b.fmul(s, e.ld(xdb, e.mul(g0, 4), F32)))
            else:
                s = b.fmul(e.halves(P[2], e.mul(g0, 2), ng), e.ld(xdb, e.mul(g0, 4), V(F32, ng)))
                coef = e.shuf(s, _lane_groups(TU, TS, Gs))
            acc.put(t, e.fma(coef, e.cvt(isum), acc.get(t)))

        over_t(spec, e, T, tstep)


def _finish(spec: Spec, e: E, P, X, ncols, fam, acc, t):
    """y_t: the two accumulators summed, plus the bias term sum_g b_g * xsum_g (unsigned codes)."""
    b = e.b
    y = e.hsum(b.fadd(acc.get(t, 0), acc.get(t, 1)))
    if not fam.has_bias(spec):
        return y
    xst = row_x(e, X[4], X[5], t)
    bacc = cgutils.alloca_once_value(b, e.k(V(F32, 8), 0.0))
    ngp = b.udiv(e.add(b.udiv(ncols, e.i(spec.group)), pl.PAD_GROUPS - 1), e.i(pl.PAD_GROUPS))
    with cgutils.for_range(b, ngp) as gl:
        g8 = e.mul(gl.index, 8)
        b.store(e.fma(fam.bias8(spec, e, P, g8), e.ld(xst, e.mul(g8, 4), V(F32, 8)), b.load(bacc)), bacc)
    return b.fadd(y, e.hsum(b.load(bacc)))


# ----------------------------------------------------------------------------- dequantization
def _deq_unit(spec: Spec, e: E, P, out, x0, codes, unit, stride, fam):
    """Write one unit (element x0, `codes` in its interleave) dequantized, kernel order:
    s * int + b, with the family's integer values (`deq_int`) and stored biases (`stored_bias`)."""
    b, Gs = e.b, spec.group
    g0 = b.udiv(x0, e.i(Gs))
    ng = max(1, unit // Gs)
    lane_g = [(j * stride) // Gs for j in range(32)] if ng > 1 else [0] * 32
    s = e.shuf(e.halves(P[2], e.mul(g0, 2), ng), lane_g) if ng > 1 else \
        e.splat(b.fpext(e.ld(P[2], e.mul(g0, 2), F16), F32), 32)
    bb = None
    if fam.stored_bias(spec):
        bb = e.shuf(e.halves(P[3], e.mul(g0, 2), ng), lane_g) if ng > 1 else \
            e.splat(b.fpext(e.ld(P[3], e.mul(g0, 2), F16), F32), 32)
    for c, q in enumerate(codes):
        w = b.fmul(b.sitofp(fam.deq_int(spec, e, q), V(F32, 32)), s)
        if bb is not None:
            w = b.fadd(w, bb)
        e.st(out, e.mul(e.add(x0, 32 * c), 4), w)


def deq_body(spec: Spec, e: E, P, out, ncols, fam):
    """Exact dequantization of a row, kernel order (main units, then the tail)."""
    b = e.b
    U, Gs = spec.unit, spec.group
    NU = 8 * Gs // U
    nblk = b.udiv(ncols, e.i(8 * Gs))
    with cgutils.for_range(b, b.mul(nblk, e.i(NU))) as loop:
        u = loop.index
        _deq_unit(spec, e, P, out, e.mul(u, U), fam.codes(spec, e, P, u), U, spec.stride, fam)
    TU, TS = fam.tail_unit(spec)
    x_start = e.mul(nblk, 8 * Gs)
    with cgutils.for_range(b, b.udiv(b.sub(ncols, x_start), e.i(TU))) as loop:
        i = loop.index
        x0 = e.add(x_start, e.mul(i, TU))
        _deq_unit(spec, e, P, out, x0, fam.tail_codes(spec, e, P, nblk, i), TU, TS, fam)


def i32_of(spec: Spec, e: E, q):
    """Default integer value of a code vector: sign- or zero-extended."""
    return e.b.sext(q, V(I32, 32)) if spec.signed else e.b.zext(q, V(I32, 32))
