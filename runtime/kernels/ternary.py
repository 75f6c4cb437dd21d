"""Ternary types TQ2_0 and TQ1_0: w = d * (q - 1), q in {0, 1, 2}, one f16 d per 256 weights.

Both run on the stored blocks in place (p0 = the row's raw blocks; field
offsets from `tables.GGML_FIELDS`), in stored element order, as super-blocks
with unit scales and a min term (-d * sum of the activations):

    TQ2_0  qs[64] | d       chunk c = crumb c % 4 of bytes 32 (c // 4) ..   (Q2_K's code layout)
    TQ1_0  qs[48] | qh[4] | d    five base-3 digits per byte: digit k of byte v is
           ((v * 3^k mod 256) * 3) >> 8.  Chunks 0-4: qs[0:32] times 3^c;  chunk 5:
           qs[32:48] x 1 | x 3;  chunk 6: x 9 | x 27;  chunk 7: x 81 | qh[l] x 3^k (elements 240 + 4k + l)

Byte products by 3 and 9 are adds and 16-bit shifts masked to bytes (x * 9 =
(x << 3 & 0xF8) + x), and the digit is (v >= 86) + (v >= 171), an unsigned
compare pair, exact for every byte.  Per activation: 8 vpmaddubsw added in i16
(codes <= 2), one vpmaddwd by ones, one fma, plus the min term.
"""
from __future__ import annotations

import sys

from ...tables import QK_K, block_fields, quant_info
from . import planes as pl
from . import superblock
from .emit import F16, F32, I8, I16, I32, E, V
from .spec import Spec, register
from .superblock import Block

FAMILY = "tq"
_F = {n: block_fields(n) for n in ("TQ1_0", "TQ2_0")}
_BB = {n: quant_info(n).block_bytes for n in ("TQ1_0", "TQ2_0")}


def specs():
    return [Spec(n, FAMILY, 2, QK_K, QK_K, QK_K, 32) for n in ("TQ1_0", "TQ2_0")]


def repack(spec: Spec, data, rows: int, cols: int, scales=None, biases=None):
    return pl.planes(pl.blocks(data, spec.name, rows, cols).reshape(rows, -1)), cols  # in place


x_widths = superblock.x_widths


def _times9(e: E, v):
    """Bytes times 9 mod 256: (v << 3, as 16-bit lanes, masked to bytes) + v."""
    b = e.b
    s = b.bitcast(b.shl(b.bitcast(v, V(I16, 16)), e.k(V(I16, 16), 3)), V(I8, 32))
    return b.add(b.and_(s, e.k(v.type, 0xF8)), v)


def _digit(e: E, v):
    """((v * 3) >> 8) for unsigned bytes: (v >= 86) + (v >= 171)."""
    b = e.b
    one = lambda t: b.zext(b.icmp_unsigned(">=", v, e.k(v.type, t)), v.type)  # noqa: E731
    return b.add(one(86), one(171))


def _powers(e: E, v):
    """v times 1, 3, 9, 27, 81 (mod 256, per byte)."""
    v3 = e.b.add(v, e.b.add(v, v))
    v9 = _times9(e, v)
    return [v, v3, v9, _times9(e, v3), _times9(e, v9)]


def _tq1_codes(e: E, p0, base):
    f = _F["TQ1_0"]
    b = e.b
    out = _powers(e, e.ld(p0, e.add(base, f["qs"].start), V(I8, 32)))  # chunks 0-4
    q1 = e.shuf(e.ld(p0, e.add(base, f["qs"].start + 32), V(I8, 16)), list(range(16)) * 2)
    m = _powers(e, q1)
    lo = list(range(16))
    hi = [32 + i for i in range(16)]
    cat = lambda a, c: b.shuffle_vector(a, c, e.vec(V(I32, 32), lo + hi))  # noqa: E731  [a.lo | c.lo]
    qh = e.shuf(e.ld(p0, e.add(base, f["qh"].start), V(I8, 4)), list(range(4)) * 8)
    hpow = _powers(e, qh)  # element 240 + 4k + l = qh[l] * 3^k: lane 4k + l of the upper half from hpow[k]
    tail = hpow[0]
    for k in range(1, 4):
        tail = b.shuffle_vector(tail, hpow[k], e.vec(V(I32, 32), [32 + i if (i // 4) % 4 == k else i
                                                                  for i in range(32)]))
    tail = e.shuf(tail, list(range(16)) * 2)
    out += [cat(m[0], m[1]), cat(m[2], m[3]), cat(m[4], tail)]
    return [_digit(e, v) for v in out]


def _decode(spec: Spec, e: E, P, sb):
    """(8 code vectors in {0, 1, 2}, d)."""
    f, p0 = _F[spec.name], P[0]
    base = e.mul(sb, _BB[spec.name])
    if spec.name == "TQ2_0":
        codes = [e.crumb(p0, e.add(base, f["qs"].start + 32 * (c // 4)), c % 4) for c in range(8)]
    else:
        codes = _tq1_codes(e, p0, base)
    return codes, e.b.fpext(e.ld(p0, e.add(base, f["d"].start), F16), F32)


def scale_groups(spec: Spec) -> list[int]:
    """One scale (d) for the whole super-block (tiled.py)."""
    return [0] * 16


def block(spec: Spec, e: E, P, sb) -> Block:
    codes, d = _decode(spec, e, P, sb)
    return Block(codes, d, mins=e.k(V(F32, 8), 1.0), dmin=d, offset=1)


def deq_block(spec: Spec, e: E, P, sb, store):
    """gguf-py's order: d * float(q - 1)."""
    b = e.b
    codes, d = _decode(spec, e, P, sb)
    for c in range(8):
        q = b.sub(b.zext(codes[c], V(I32, 32)), e.k(V(I32, 32), 1))
        store(c, b.fmul(e.splat(d, 32), b.sitofp(q, V(F32, 32))))


def row_body(spec: Spec, e: E, P, X, T, ncols):
    return superblock.row_body(spec, e, P, X, T, ncols, sys.modules[__name__])


def deq_body(spec: Spec, e: E, P, out, ncols):
    superblock.deq_body(spec, e, P, out, ncols, sys.modules[__name__])


register(FAMILY, sys.modules[__name__], specs())
