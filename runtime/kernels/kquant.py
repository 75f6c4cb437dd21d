"""K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): 256-weight super-blocks, integer sub-block scales.

Planes (one row = the super-blocks' fields split apart, ggml's element order kept;
field names as in `edgeslim.tables.GGML_FIELDS`, bit drawings in edgeslim/quants):

    Q4_K  p0 qs (128 B/sb, nib)   p2 scales u8 x8   p3 mins u8 x8    p4 d, dmin f16
    Q5_K  + p1 qh (32 B/sb, bit k = 5th bit of chunk k)
    Q6_K  p0 ql (128 B, nib, ggml order)  p1 qh (64 B, crumb)  p2 scales i8 x16  p4 d f16
    Q2_K  p0 qs (64 B, crumb)     p2 scale|min<<4 u8 x16          p4 d, dmin f16
    Q3_K  p0 qs (64 B, crumb)     p1 hmask (32 B, bit)  p2 (scale-32) i8 x16  p4 d f16

Activations: int8 per 256 (like ggml's Q8_K) with float sums per scale group.
One super-block costs, per activation, 8 x (vpmaddubsw codes x x8, vpmaddwd by
the chunk's integer scales) into one <8 x i32>, then two float fmas: d*dx times
that sum, and -dmin times (mins . group sums of the quantized activations).
Signed-scale types (Q3_K, Q6_K) treat their code offset (4 or 32) as the min.
"""
from __future__ import annotations

import sys

import numpy as np
from llvmlite import ir
from numba.core import cgutils

from ...tables import QK_K, quant_info
from . import planes as pl
from .emit import F16, F32, I8, I16, I32, E, V
from .rows import Acc, over_t, row_x
from .spec import Spec, register

FAMILY = "kq"
GROUP = {"Q2_K": 16, "Q3_K": 16, "Q4_K": 32, "Q5_K": 32, "Q6_K": 16}  # weights per integer scale


def specs():
    return [Spec(n, FAMILY, quant_info(n).bits, QK_K, g, QK_K, g) for n, g in GROUP.items()]


# ----------------------------------------------------------------------------- repack (numpy, at load)
def _scale_min_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K 12-byte packed 6-bit (scale, min) x 8 -> two (..., 8) uint8.

    bytes 0-3: scale j (low 6 bits) | scale j+4 bits 4-5 (top 2)
    bytes 4-7: min j   (low 6 bits) | min j+4 bits 4-5 (top 2)
    bytes 8-11: scale j+4 bits 0-3 (low nibble) | min j+4 bits 0-3 (high nibble)
    Done on the three little-endian 32-bit words (4 bytes at a time; the masks
    keep bits from crossing byte boundaries).
    """
    w = np.ascontiguousarray(s).view("<u4")  # (..., 3)
    d, m, md = w[..., 0], w[..., 1], w[..., 2]
    lo6, hi2, nib = np.uint32(0x3F3F3F3F), np.uint32(0x30303030), np.uint32(0x0F0F0F0F)
    sc = np.stack([d & lo6, (md & nib) | ((d >> 2) & hi2)], axis=-1)
    mn = np.stack([m & lo6, ((md >> 4) & nib) | ((m >> 2) & hi2)], axis=-1)
    shape = s.shape[:-1] + (8,)
    return sc.view(np.uint8).reshape(shape), mn.view(np.uint8).reshape(shape)


def _scales_q3k(s: np.ndarray) -> np.ndarray:
    """Q3_K 12-byte packed 6-bit scales x 16 -> (..., 16) int8 (value - 32).

    bytes 0-7: low nibbles = scales 0-7 low 4 bits, high nibbles = scales 8-15 low 4 bits
    bytes 8-11: 2-bit high parts, scale 4i+k... at bits 2k of byte 8+(i%4)
    """
    lo = np.concatenate([s[..., 0:8] & 0x0F, s[..., 0:8] >> 4], axis=-1)
    hb = s[..., 8:12]
    hi = np.concatenate([(hb >> (2 * k)) & 3 for k in range(4)], axis=-1)
    return ((lo | (hi << 4)).astype(np.int16) - 32).astype(np.int8)


def repack(spec: Spec, data, rows: int, cols: int, scales=None, biases=None):
    f = pl.fields(pl.blocks(data, spec.name, rows, cols), spec.name)
    name = spec.name
    if name in ("Q4_K", "Q5_K"):
        sc, mn = _scale_min_k4(f["scales"])
        dd = np.concatenate([f["d"], f["dmin"]], axis=-1)
        return pl.planes(f["qs"], f.get("qh"), sc, mn, dd), cols, None
    if name == "Q6_K":
        return pl.planes(f["ql"], f["qh"], f["scales"], None, f["d"]), cols, None
    if name == "Q2_K":
        dd = np.concatenate([f["d"], f["dmin"]], axis=-1)
        return pl.planes(f["qs"], None, f["scales"], None, dd), cols, None
    return pl.planes(f["qs"], f["hmask"], _scales_q3k(f["scales"]), None, f["d"]), cols, None  # Q3_K


def x_widths(spec: Spec, colsp: int, planes):
    """(xq, xd, xs) widths: one int8 per element, one scale per 256, one sum per scale group."""
    return colsp, colsp // spec.xblk, colsp // spec.sgroup


# ----------------------------------------------------------------------------- decoding (LLVM IR)
def _block(spec: Spec, e: E, P, sb):
    """One super-block: 8 chunk codes, 8 <16 x i16> chunk scales, float mins.

    Returns codes, scales, mins (<G x float>, G = groups), d, dmin (float scalars)
    with  w = d * scale * code - dmin * min  per group.
    """
    b, name = e.b, spec.name
    p0, p1, p2, p3, p4 = P
    if name in ("Q4_K", "Q5_K"):
        codes = [e.nib(p0, e.add(e.mul(sb, 128), 32 * (c // 2)), c % 2) for c in range(8)]
        if name == "Q5_K":
            codes = [b.or_(codes[c], e.bit(p1, e.mul(sb, 32), c, 4)) for c in range(8)]
        sc = b.zext(e.ld(p2, e.mul(sb, 8), V(I8, 8)), V(I16, 8))
        scd = e.shuf(sc, list(range(8)) * 2)  # the 8 scales in both 128-bit halves
        scales = [e.lane_bcast16(scd, c) for c in range(8)]
        mins = b.uitofp(e.ld(p3, e.mul(sb, 8), V(I8, 8)), V(F32, 8))
        dd = e.halves(p4, e.mul(sb, 4), 2)
        return codes, scales, mins, e.lane(dd, 0), e.lane(dd, 1)
    if name == "Q6_K":  # ql chunk (h, s): bytes h*64 + (s%2)*32, nibble s//2; qh crumb s of bytes h*32
        codes = [b.or_(e.nib(p0, e.add(e.mul(sb, 128), 64 * (c // 4) + 32 * (c % 2)), (c % 4) // 2),
                       e.crumb(p1, e.add(e.mul(sb, 64), 32 * (c // 4)), c % 4, pos=4)) for c in range(8)]
    else:
        codes = [e.crumb(p0, e.add(e.mul(sb, 64), 32 * (c // 4)), c % 4) for c in range(8)]
        if name == "Q3_K":
            codes = [b.or_(codes[c], e.bit(p1, e.mul(sb, 32), c, 2)) for c in range(8)]
    raw = e.ld(p2, e.mul(sb, 16), V(I8, 16))
    if name == "Q2_K":
        sc = b.zext(b.and_(raw, e.k(raw.type, 15)), V(I16, 16))
        mins = b.uitofp(b.lshr(raw, e.k(raw.type, 4)), V(F32, 16))
        dd = e.halves(p4, e.mul(sb, 4), 2)
        d, dmin = e.lane(dd, 0), e.lane(dd, 1)
    else:  # signed scales; the code offset (32 or 4) is the "min": w = d*sc*(q - off)
        sc = b.sext(raw, V(I16, 16))
        mins = b.sitofp(raw, V(F32, 16))
        d = b.fpext(e.ld(p4, e.mul(sb, 2), F16), F32)
        dmin = b.fmul(d, ir.Constant(F32, 32.0 if name == "Q6_K" else 4.0))
    scp = e.shuf(sc, list(range(0, 16, 2)) + list(range(1, 16, 2)))  # even groups low half, odd high
    scales = [e.lane_bcast16(scp, c) for c in range(8)]  # chunk c = groups 2c | 2c+1
    return codes, scales, mins, d, dmin


def row_body(spec: Spec, e: E, P, X, T, ncols):
    """Emit the row's accumulation; returns a finisher giving float y_t."""
    b = e.b
    xq, xqs, xd, xds, xs, xss = X
    acc = Acc(e, spec, 1, T)
    G = QK_K // spec.group

    with cgutils.for_range(b, b.udiv(ncols, e.i(QK_K))) as loop:
        sb = loop.index
        codes, scales, mins, d, dmin = _block(spec, e, P, sb)

        def step(t):
            xqt, xdt, xst = row_x(e, xq, xqs, t), row_x(e, xd, xds, t), row_x(e, xs, xss, t)
            isum = None
            for c in range(8):
                x8 = e.ld(xqt, e.add(e.mul(sb, QK_K), 32 * c), V(I8, 32))
                v = e.madd(e.maddubs(codes[c], x8), scales[c])
                isum = v if isum is None else b.add(isum, v)
            mx = b.fmul(mins, e.ld(xst, e.mul(sb, 4 * G), V(F32, G)))
            if G == 16:
                mx = b.fadd(e.shuf(mx, range(8)), e.shuf(mx, range(8, 16)))
            a = e.fma(e.splat(b.fsub(ir.Constant(F32, 0.0), dmin)), mx, acc.get(t))
            dx = e.ld(xdt, e.mul(sb, 4), F32)
            acc.put(t, e.fma(e.splat(b.fmul(d, dx)), e.cvt(isum), a))

        over_t(spec, e, T, step)

    return lambda t: e.hsum(acc.get(t))


def deq_body(spec: Spec, e: E, P, out, ncols):
    """Exact dequantization, the float operations of gguf-py's numpy reference in its order:
    (d * scale) * q - dmin * min per group."""
    b, name = e.b, spec.name
    G = QK_K // spec.group
    with cgutils.for_range(b, b.udiv(ncols, e.i(QK_K))) as loop:
        sb = loop.index
        codes, _, _, d, dmin = _block(spec, e, P, sb)
        raw = e.ld(P[2], e.mul(sb, G), V(I8, G))
        if name in ("Q4_K", "Q5_K"):
            scf = b.uitofp(raw, V(F32, 8))
            mnf = b.uitofp(e.ld(P[3], e.mul(sb, 8), V(I8, 8)), V(F32, 8))
        elif name == "Q2_K":
            scf = b.uitofp(b.and_(raw, e.k(raw.type, 15)), V(F32, 16))
            mnf = b.uitofp(b.lshr(raw, e.k(raw.type, 4)), V(F32, 16))
        else:
            scf = b.sitofp(raw, V(F32, 16))
        dl = b.fmul(e.splat(d, G), scf)  # d * scale, per group
        ml = b.fmul(e.splat(dmin, G), mnf) if name in ("Q2_K", "Q4_K", "Q5_K") else None
        off = {"Q6_K": 32, "Q3_K": 4}.get(name, 0)
        for c in range(8):
            q = b.zext(codes[c], V(I32, 32))
            if off:
                q = b.sub(q, e.k(V(I32, 32), off))
            gmask = [c] * 32 if G == 8 else [2 * c] * 16 + [2 * c + 1] * 16
            w = b.fmul(e.shuf(dl, gmask), b.sitofp(q, V(F32, 32)))
            if ml is not None:
                w = b.fsub(w, e.shuf(ml, gmask))
            e.st(out, e.mul(e.add(e.mul(sb, QK_K), 32 * c), 4), w)


register(FAMILY, sys.modules[__name__], specs())
assert QK_K == 256  # the plane layouts above are drawn for 256-weight super-blocks
