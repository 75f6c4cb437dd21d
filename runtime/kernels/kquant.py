"""K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): 256-weight super-blocks, integer sub-block scales.

    Q4_K/Q5_K  w = d * sc_j * q - dmin * m_j      32-weight groups, sc, m 6-bit     q 4/5-bit
    Q2_K       w = d * sc_j * q - dmin * m_j      16-weight groups, sc, m 4-bit     q 2-bit
    Q3_K       w = d * sc_j * (q - 4)             16-weight groups, sc signed       q 3-bit
    Q6_K       w = d * sc_j * (q - 32)            16-weight groups, sc int8         q 6-bit

Codes are repacked at load into a stride-8 interleave per super-block (chunk c,
lane j = element 8j + c; the activations are reordered the same way,
`x_order`), so that in every chunk the i16 lane m of vpmaddubsw covers
elements 16m + c and 16m + 8 + c: group m of 16, or group m // 2 of 32.  All 8
chunks then add up in i16 (while they cannot overflow: Q2/Q3/Q4_K 8 chunks,
Q5_K 4, Q6_K 2) and meet the super-block's scales in one vpmaddwd per partial
sum: one <16 x i16> scale vector ([sc0, sc0, sc1, sc1, ...] for 32-groups,
[sc0 .. sc15] for 16-groups; vpmaddwd pairs neighbouring groups, each with its
own scale).  Planes (element codes in that order; field names of
`tables.GGML_FIELDS`):

    p0  low code bits: nib (Q4/5/6_K, 128 B/sb) or crumb (Q2/3_K, 64 B/sb) plane
    p1  high bits: Q5_K bit plane (32 B), Q6_K crumb plane (64 B, bits 4-5), Q3_K bit plane (32 B, bit 2)
    p2  scales: Q4/5_K u8 x8, Q2_K (scale | min << 4) u8 x16, Q3_K (sc - 32) int8 x16, Q6_K int8 x16
    p3  Q4/5_K mins u8 x8      p4  d (and dmin) f16

Per activation and super-block (Q4_K, AVX2): 8 vpmaddubsw + 7 vpaddw, one
vpmaddwd by the scales, int -> float, one fma by d * dx, and the min term
(-dmin * mins . group sums of the quantized activations, one fma).  Signed-
scale types use the code offset as their min.  Activations: int8 per 256.
Read from the generated assembly (Q4_K, host target znver5): about 50
instructions per super-block: 4 code loads, 4 vpand + 4 vgf2p8affineqb
(nibbles), 8 vpmaddubsw with the activations as memory operands, 7 vpaddw,
one vpmaddwd by the scales (vmovq + vpunpcklbw + vpmovzxbw), the mins
(vpmovzxbd, vcvtdq2ps, vmulps by the group sums), d and dmin (vcvtph2ps,
vmovshdup, vbroadcastss), vfnmadd213ps and the final fma.
"""
from __future__ import annotations

import sys

import numpy as np
from llvmlite import ir

from ...tables import QK_K, quant_info
from .. import blocks as gb
from . import planes as pl
from . import superblock
from .emit import F16, F32, I8, I16, I32, E, V
from .spec import Spec, register
from .superblock import Block

FAMILY = "kq"
GROUP = {"Q2_K": 16, "Q3_K": 16, "Q4_K": 32, "Q5_K": 32, "Q6_K": 16}  # weights per integer scale
_OFFSET = {"Q6_K": 32, "Q3_K": 4}  # w = d * sc * (q - offset)
_SPLIT = {"Q2_K": (2, 0), "Q3_K": (2, 1), "Q4_K": (4, 0), "Q5_K": (4, 1), "Q6_K": (4, 2)}  # low, high bits


SCALE_PER_LANE = True  # Block.scale_all: one scale per i16 lane, the same in every chunk (tiled.py)


def scale_groups(spec: Spec) -> list[int]:
    """The scale group of each i16 lane m (tiled.py's run m: lane m of the 8 chunks)."""
    return [m // (GROUP[spec.name] // 16) for m in range(16)]


def has_mins(spec: Spec) -> bool:
    """Whether the type has true mins (not just a code offset): Q2_K, Q4_K, Q5_K."""
    return spec.name not in _OFFSET


def specs():
    return [Spec(n, FAMILY, quant_info(n).bits, QK_K, g, QK_K, g, stride=8) for n, g in GROUP.items()]


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


def _q4k_nib_plane(qs: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K qs (rows, nsb, 128) -> the interleaved nib plane, nibble to nibble.

    Byte j of vector v holds elements 8j + 2v (low) and 8j + 2v + 1 (high); with
    j = 8g + 4h + i they are nibble h of the neighbouring bytes qs[32g + 8i + 2v] and
    qs[32g + 8i + 2v + 1].  Works on half-byte-per-weight arrays (no code array).
    """
    rows, nsb = qs.shape[:2]
    q = qs.reshape(rows, nsb, 4, 4, 4, 2)  # [g, i, v, pair]
    a, b = q[..., 0], q[..., 1]
    both = np.stack([(a & 0x0F) | (b << 4), (a >> 4) | (b & 0xF0)], axis=3)  # [g, h, i, v]
    return np.ascontiguousarray(both.transpose(0, 1, 5, 2, 3, 4)).reshape(rows, nsb * 128)  # [v, g, h, i]


def _repack_rows(f: dict, name: str):
    """Block fields of some rows -> their five planes (module doc)."""
    rows, nsb = f["d"].shape[:2]
    low, high = _SPLIT[name]
    if name in ("Q4_K", "Q5_K"):
        p0 = _q4k_nib_plane(f["qs"])
        p1 = pl.pack_field(gb.kquant_codes(f, name).reshape(rows, nsb * QK_K), QK_K, 4, 1) if high else None
    else:
        q = gb.kquant_codes(f, name).reshape(rows, nsb * QK_K)  # element order
        p0 = pl.pack_field(q, QK_K, 0, low)
        p1 = pl.pack_field(q, QK_K, low, high) if high else None
    if name in ("Q4_K", "Q5_K"):
        sc, mn = _scale_min_k4(f["scales"])
        return pl.planes(p0, p1, sc, mn, np.concatenate([f["d"], f["dmin"]], axis=-1))
    if name == "Q2_K":
        return pl.planes(p0, None, f["scales"], None, np.concatenate([f["d"], f["dmin"]], axis=-1))
    sc = _scales_q3k(f["scales"]) if name == "Q3_K" else f["scales"]
    return pl.planes(p0, p1, sc, None, f["d"])


def repack(spec: Spec, data, rows: int, cols: int, scales=None, biases=None):
    b = pl.blocks(data, spec.name, rows, cols)
    return pl.by_rows(rows, cols, lambda r0, r1: _repack_rows(pl.fields(b[r0:r1], spec.name), spec.name)), cols


x_widths = superblock.x_widths


def x_order(spec: Spec):
    return np.arange(QK_K).reshape(32, 8).T.reshape(-1)  # chunk c, lane j <- element 8j + c


# ----------------------------------------------------------------------------- decoding (LLVM IR)
def _codes(spec: Spec, e: E, P, sb):
    """The super-block's 8 chunk code vectors (interleaved order, unsigned)."""
    b, (low, high) = e.b, _SPLIT[spec.name]
    if low == 4:
        codes = [e.nib(P[0], e.add(e.mul(sb, 128), 32 * (c // 2)), c % 2) for c in range(8)]
    else:
        codes = [e.crumb(P[0], e.add(e.mul(sb, 64), 32 * (c // 4)), c % 4) for c in range(8)]
    if high == 1:
        codes = [b.or_(q, e.bit(P[1], e.mul(sb, 32), c, low)) for c, q in enumerate(codes)]
    elif high == 2:
        codes = [b.or_(q, e.crumb(P[1], e.add(e.mul(sb, 64), 32 * (c // 4)), c % 4, pos=low))
                 for c, q in enumerate(codes)]
    return codes


def _params(spec: Spec, e: E, P, sb):
    """(integer scales <G x i16>, float scales <G x f32>, float mins <G x f32> or None, d, dmin)."""
    b, name = e.b, spec.name
    G = QK_K // spec.group
    raw = e.ld(P[2], e.mul(sb, G), V(I8, G))
    if name in ("Q4_K", "Q5_K", "Q2_K"):
        sc = b.and_(raw, e.k(raw.type, 15)) if name == "Q2_K" else raw
        mins = b.lshr(raw, e.k(raw.type, 4)) if name == "Q2_K" else e.ld(P[3], e.mul(sb, 8), V(I8, 8))
        dd = e.halves(P[4], e.mul(sb, 4), 2)
        return b.zext(sc, V(I16, G)), b.uitofp(sc, V(F32, G)), b.uitofp(mins, V(F32, G)), e.lane(dd, 0), e.lane(dd, 1)
    d = b.fpext(e.ld(P[4], e.mul(sb, 2), F16), F32)
    return b.sext(raw, V(I16, G)), b.sitofp(raw, V(F32, G)), None, d, b.fmul(d, ir.Constant(F32, float(_OFFSET[name])))


def block(spec: Spec, e: E, P, sb) -> Block:
    sc16, scf, mnf, d, dmin = _params(spec, e, P, sb)
    sc32 = None
    if spec.group == 32:  # i16 lane m of a chunk is group m // 2, bytes 4m..4m+3 are group m
        sc16, sc32 = e.shuf(sc16, [m // 2 for m in range(16)]), e.b.zext(sc16, V(I32, 8))
    mins = mnf if mnf is not None else scf  # signed scales: the code offset acts as the min
    return Block(_codes(spec, e, P, sb), d, scale_all=sc16, mins=mins, dmin=dmin, scale32=sc32,
                 offset=_OFFSET.get(spec.name, 0))


def deq_block(spec: Spec, e: E, P, sb, store):
    """Exact dequantization, gguf-py's float operations in its order: (d * scale) * (q - offset)
    - dmin * min per group, written in kernel order (lane j of every chunk is in group 8j // G)."""
    b = e.b
    _, scf, mnf, d, dmin = _params(spec, e, P, sb)
    G = QK_K // spec.group
    gmask = [(8 * j) // spec.group for j in range(32)]
    dl = e.shuf(b.fmul(e.splat(d, G), scf), gmask)  # d * scale, per lane
    ml = None if mnf is None else e.shuf(b.fmul(e.splat(dmin, G), mnf), gmask)
    off = _OFFSET.get(spec.name, 0)
    for c, q in enumerate(_codes(spec, e, P, sb)):
        qi = b.zext(q, V(I32, 32))
        if off:
            qi = b.sub(qi, e.k(V(I32, 32), off))
        w = b.fmul(dl, b.sitofp(qi, V(F32, 32)))
        store(c, w if ml is None else b.fsub(w, ml))


def row_body(spec: Spec, e: E, P, X, T, ncols):
    return superblock.row_body(spec, e, P, X, T, ncols, sys.modules[__name__])


def deq_body(spec: Spec, e: E, P, out, ncols):
    superblock.deq_body(spec, e, P, out, ncols, sys.modules[__name__])


register(FAMILY, sys.modules[__name__], specs())
assert QK_K == 256  # the plane layouts above are drawn for 256-weight super-blocks
