"""Float weights (F16, BF16, F32): raw values in one plane, float activations.

    p0 = (rows, colsp * size) little-endian values, zero-padded to a multiple of 32

Inner loop: 32 elements per step in four independent <8 x float>
accumulators (vcvtph2ps for F16, a 16-bit shift for BF16), one fma each.
`linear` sends F32 weights to BLAS instead (driver.py).
"""
from __future__ import annotations

import sys

import numpy as np
from numba.core import cgutils

from ...errors import FormatError
from ...tables import quant_info
from . import planes as pl
from .emit import F32, E, V
from .rows import Acc, over_t, row_x
from .spec import Spec, register

FAMILY = "flt"


def specs():
    return [Spec(n, FAMILY, bits, 32, 32, 0, 32) for n, bits in (("F16", 16), ("BF16", 16), ("F32", 32))]


def repack(spec: Spec, data, rows: int, cols: int, scales=None, biases=None):
    size = quant_info(spec.name).block_bytes
    colsp = -(-cols // 32) * 32
    raw = pl.as_bytes(data)
    if raw.size != rows * cols * size:
        raise FormatError(f"{spec.name} weight ({rows}x{cols}) has {raw.size} bytes, expected {rows * cols * size}")
    raw = raw.reshape(rows, cols * size)
    if colsp != cols:
        raw = np.pad(raw, ((0, 0), (0, (colsp - cols) * size)))
    return pl.planes(raw), colsp


def x_widths(spec: Spec, colsp: int, planes):
    return colsp, 0, colsp  # xq only gives the kernel its row length; x itself is read as xs


def _load(spec: Spec, e: E, base, j, k, n):
    """n values from element 32*j + n*k of the row, as <n x float>."""
    if spec.name == "F16":
        return e.halves(base, e.add(e.mul(j, 64), 2 * n * k), n)
    if spec.name == "BF16":
        return e.bf16s(base, e.add(e.mul(j, 64), 2 * n * k), n)
    return e.ld(base, e.add(e.mul(j, 128), 4 * n * k), V(F32, n))


def row_body(spec: Spec, e: E, P, X, T, ncols):
    b = e.b
    _, _, _, _, xs, xss = X
    acc = Acc(e, spec, 4, T)
    with cgutils.for_range(b, b.udiv(ncols, e.i(32))) as loop:
        j = loop.index
        w = [_load(spec, e, P[0], j, k, 8) for k in range(4)]

        def fstep(t):
            xt = row_x(e, xs, xss, t)
            for k in range(4):
                xv = e.ld(xt, e.add(e.mul(j, 128), 32 * k), V(F32, 8))
                acc.put(t, e.fma(w[k], xv, acc.get(t, k)), k)

        over_t(spec, e, T, fstep)

    def finish(t):
        s = b.fadd(b.fadd(acc.get(t, 0), acc.get(t, 1)), b.fadd(acc.get(t, 2), acc.get(t, 3)))
        return e.hsum(s)

    return finish


def deq_body(spec: Spec, e: E, P, out, ncols):
    with cgutils.for_range(e.b, e.b.udiv(ncols, e.i(32))) as loop:
        j = loop.index
        e.st(out, e.mul(j, 128), _load(spec, e, P[0], j, 0, 32))


register(FAMILY, sys.modules[__name__], specs())
