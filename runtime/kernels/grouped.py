"""The shared row body of the "one float scale per small group" families (affine, legacy 32-wide).

A row is a sequence of *units* (U = 32*S elements, S chunk code vectors of
<32 x i8> each, decoded by the family's `codes(spec, e, P, u)`), with one f16
scale per group of `spec.group` elements in plane p2 and, unless the codes
are signed, a per-group bias given by the family's `bias8(spec, e, P, g8)`
(8 groups from g8 on, as <8 x float>).  Activations are int8 per group with
float sums per group:

    y = sum_g s_g * dx_g * (codes_g . xq_g)  +  sum_g b_g * xsum_g

Inner loop, per unit and activation: vpmaddubsw (vpsignb + vpmaddubsw for
signed codes) per chunk, pair sums widened with vpmaddwd by ones (i16 sums
are added first while they cannot overflow), int -> float, and one fma by
the lanes' (scale x activation scale).  Blocks of NU units spanning exactly
8 groups share one <8 x float> of those coefficients (one vcvtph2ps + vmulps),
each unit picking its lanes with one shuffle.  The bias term runs once per
row over the per-group sums.
"""
from __future__ import annotations

from numba.core import cgutils

from . import planes as pl
from .emit import F16, F32, I8, I32, E, V
from .rows import Acc, over_t, row_x
from .spec import Spec


def x_widths(spec: Spec, colsp: int, planes):
    """xq one per element, xd one scale per group, xs one sum per group (padded group count)."""
    nxs = planes[2].shape[1] // 2 if not spec.signed else colsp // spec.sgroup
    return colsp, max(colsp // spec.xblk, nxs), nxs


def _lane_groups(spec: Spec) -> list[int]:
    """For each i32 lane l of a unit's dot vector: which of the unit's groups it belongs to.

    Lane l sums chunk lanes 4l..4l+3, i.e. elements (4l..4l+3)*S + c of the unit.
    """
    return [(4 * l * spec.stride) // spec.group for l in range(8)] if spec.unit >= spec.group else [0] * 8


def _unit_groups(spec: Spec, e: E, u):
    """(first group index of unit u, number of groups the unit spans)."""
    if spec.unit >= spec.group:
        return e.mul(u, spec.unit // spec.group), spec.unit // spec.group
    return e.b.udiv(e.i(u), e.i(spec.group // spec.unit)), 1


def _coef(spec: Spec, e: E, base, g0, ng, xdb):
    """<8 x float> of scale * activation-scale per dot lane, for groups g0 .. g0+ng-1."""
    if ng == 1:
        s = e.b.fpext(e.ld(base, e.mul(g0, 2), F16), F32)
        return e.splat(e.b.fmul(s, e.ld(xdb, e.mul(g0, 4), F32)))
    s = e.b.fmul(e.halves(base, e.mul(g0, 2), ng), e.ld(xdb, e.mul(g0, 4), V(F32, ng)))
    return e.shuf(s, _lane_groups(spec))


def _i16_budget(spec: Spec) -> int:
    """How many chunk pair-sums (<16 x i16>) may be added before widening, without overflow."""
    per = 2 * 128 * 127 if spec.bits == 8 else 2 * ((1 << spec.bits) - 1) * 127
    return max(1, 32767 // per)


def _unit_isum(spec: Spec, e: E, u, codes, xqt):
    """<8 x i32>: lane l = sum over the unit's chunk lanes 4l..4l+3 of code * x."""
    b, budget = e.b, _i16_budget(spec)
    isum, part, n_part = None, None, 0
    for c, q in enumerate(codes):
        x8 = e.ld(xqt, e.add(e.mul(u, spec.unit), 32 * c), V(I8, 32))
        p = e.sign_dot(q, x8) if spec.bits == 8 else e.maddubs(q, x8)
        part = p if part is None else b.add(part, p)
        n_part += 1
        if n_part == budget or c == len(codes) - 1:
            w = e.pair_sum16(part)
            isum = w if isum is None else b.add(isum, w)
            part, n_part = None, 0
    return isum


def row_body(spec: Spec, e: E, P, X, T, ncols, fam):
    """Emit the row's accumulation (fam: the family module, for codes / bias8); returns finish(t)."""
    b = e.b
    xq, xqs, xd, xds, xs, xss = X
    acc = Acc(e, spec, 2, T)
    U, S, Gs = spec.unit, spec.stride, spec.group
    NU = 8 * Gs // U
    nunits = b.udiv(ncols, e.i(U))
    nblk = b.udiv(nunits, e.i(NU))
    with cgutils.for_range(b, nblk) as loop:
        blk = loop.index
        s8 = e.halves(P[2], e.mul(blk, 16), 8)
        units = [e.add(e.mul(blk, NU), k) for k in range(NU)]
        codes = [fam.codes(spec, e, P, u) for u in units]  # decoded once for all activations

        def step(t):
            coef8 = b.fmul(s8, e.ld(row_x(e, xd, xds, t), e.mul(blk, 32), V(F32, 8)))
            xqt = row_x(e, xq, xqs, t)
            a = [acc.get(t, 0), acc.get(t, 1)]
            for k in range(NU):
                lanes = [(k * U + 4 * l * S) // Gs for l in range(8)]
                isum = _unit_isum(spec, e, units[k], codes[k], xqt)
                a[k % 2] = e.fma(e.shuf(coef8, lanes), e.cvt(isum), a[k % 2])
            acc.put(t, a[0], 0)
            acc.put(t, a[1], 1)

        over_t(spec, e, T, step)
    # tail: units of the row's last (< 8) groups, one coefficient lookup per unit
    with cgutils.for_range(b, b.sub(nunits, e.mul(nblk, NU))) as loop:
        u = e.add(e.mul(nblk, NU), loop.index)
        codes = fam.codes(spec, e, P, u)
        g0, ng = _unit_groups(spec, e, u)

        def tstep(t, u=u, codes=codes, g0=g0, ng=ng):
            isum = _unit_isum(spec, e, u, codes, row_x(e, xq, xqs, t))
            coef = _coef(spec, e, P[2], g0, ng, row_x(e, xd, xds, t))
            acc.put(t, e.fma(coef, e.cvt(isum), acc.get(t)))

        over_t(spec, e, T, tstep)

    def finish(t):
        y = e.hsum(b.fadd(acc.get(t, 0), acc.get(t, 1)))
        if spec.signed:  # no bias
            return y
        xst = row_x(e, xs, xss, t)
        bacc = cgutils.alloca_once_value(b, e.k(V(F32, 8), 0.0))
        ngp = b.udiv(e.add(b.udiv(ncols, e.i(spec.group)), pl.PAD_GROUPS - 1), e.i(pl.PAD_GROUPS))
        with cgutils.for_range(b, ngp) as gl:
            g8 = e.mul(gl.index, 8)
            b.store(e.fma(fam.bias8(spec, e, P, g8), e.ld(xst, e.mul(g8, 4), V(F32, 8)), b.load(bacc)), bacc)
        return b.fadd(y, e.hsum(b.load(bacc)))

    return finish


def deq_body(spec: Spec, e: E, P, out, ncols, fam):
    """Exact dequantization, s * q + b per element (MLX's and ggml's d * q), kernel order."""
    b = e.b
    lane_g = [(j * spec.stride) // spec.group for j in range(32)] if spec.unit >= spec.group else [0] * 32
    with cgutils.for_range(b, b.udiv(ncols, e.i(spec.unit))) as loop:
        u = loop.index
        codes = fam.codes(spec, e, P, u)
        g0, ng = _unit_groups(spec, e, u)
        if ng == 1:
            s = e.splat(b.fpext(e.ld(P[2], e.mul(g0, 2), F16), F32), 32)
            bb = None if spec.signed else e.splat(b.fpext(e.ld(P[3], e.mul(g0, 2), F16), F32), 32)
        else:
            s = e.shuf(e.halves(P[2], e.mul(g0, 2), ng), lane_g)
            bb = e.shuf(e.halves(P[3], e.mul(g0, 2), ng), lane_g)
        for c, q in enumerate(codes):
            if spec.signed:
                qi = b.sext(q, V(I32, 32))
            elif spec.bits == 8:
                qi = b.zext(b.xor(q, e.k(q.type, 0x80)), V(I32, 32))  # undo the kernel's shift
            else:
                qi = b.zext(q, V(I32, 32))
            w = b.fmul(b.sitofp(qi, V(F32, 32)), s)
            if bb is not None:
                w = b.fadd(w, bb)
            e.st(out, e.mul(e.add(e.mul(u, spec.unit), 32 * c), 4), w)
