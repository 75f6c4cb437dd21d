"""llama.cpp's 32-wide block types: Q8_0 (the grouped body, one f16 scale per 32 weights).

Planes (stored element order, no permutation):

    Q8_0  p0 qs int8 (32 B per block)   p2 d f16 per block

Activations: int8 per 32 (ggml's Q8_0), so each block is one group of the
grouped body: vpsignb + vpmaddubsw + vpmaddwd per block, one fma per block.
"""
from __future__ import annotations

import sys

from . import grouped
from . import planes as pl
from .emit import I8, E, V
from .spec import Spec, register

FAMILY = "q32"


def specs():
    return [Spec("Q8_0", FAMILY, 8, 32, 32, 32, 32, signed=True)]


def repack(spec: Spec, data, rows: int, cols: int, scales=None, biases=None):
    f = pl.fields(pl.blocks(data, spec.name, rows, cols), spec.name)
    return pl.planes(f["qs"], None, f["d"]), cols, None


x_widths = grouped.x_widths


def codes(spec: Spec, e: E, P, u):
    return [e.ld(P[0], e.mul(u, 32), V(I8, 32))]


def bias8(spec: Spec, e: E, P, g8):
    raise AssertionError("signed 32-wide types have no bias")


def row_body(spec: Spec, e: E, P, X, T, ncols):
    return grouped.row_body(spec, e, P, X, T, ncols, sys.modules[__name__])


def deq_body(spec: Spec, e: E, P, out, ncols):
    grouped.deq_body(spec, e, P, out, ncols, sys.modules[__name__])


register(FAMILY, sys.modules[__name__], specs())
