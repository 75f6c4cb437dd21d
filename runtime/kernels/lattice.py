"""llama.cpp's lattice ("IQ grid") types: IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M.

Each 8 (IQ2, IQ1) or 4 (IQ3) weights are one row of a fixed grid, picked by an
index stored in the block; signs come per 8 weights (a 7-bit index into
ksigns, or 8 plain bits); integer scales per 32 or 16 weights; one f16 d per
256 (IQ1_M spreads d over its scales' top nibbles).  Formulas (gguf-py's):

    IQ2_XXS/XS/S  w = d * (0.5 + s) * 0.25 * grid * sign      grid {8, 25, 43}, s 4-bit
    IQ3_XXS       w = d * (0.5 + s) * 0.5 * grid * sign       grid {4 .. 62}
    IQ3_S         w = d * (1 + 2 s) * grid * sign             grid {1 .. 15}
    IQ1_S/M       w = d * (2 s + 1) * (grid +- 1/8)           grid {-1, 0, 1}, s 3-bit

so the integer part is (2s + 1) * grid * sign (IQ1: (2s + 1) * (8 grid +- 1))
and the float part d / 8, d / 4 or d.  Blocks are read in place (p0 = the
row's raw blocks, field offsets from `tables.GGML_FIELDS`): nothing is
expanded at load.  Per chunk of 32 weights the kernel gathers 4 grid rows of
8 bytes (IQ3: 8 rows of 4) from a constant table in the compiled module into
one <32 x i8> (vmovq / vpinsrq / vinserti128), builds the sign vector (ksigns
types: 4 more 8-byte rows of +-1 from a 128-row table; bit types: the 32 sign
bits spread to bytes with vpshufb, vpand, vpcmpeqb), and per activation runs
vpsignb on x, vpmaddubsw with the grid bytes and vpmaddwd by the chunk's 2s+1
(superblock.py).  IQ1 codes are 8 grid + 9 +- 1 straight from the table (the
delta bit selects the upper or lower 2048 rows), unsigned in [0, 18]; the +9
returns as a min term, 9 (2s + 1) per scale group times the activation sums,
and IQ1's scales are decoded once per super-block as one <16 x i16> vector.
Where an index has high bits in another field, IQ3_S's 8 indices per chunk are
assembled in one small vector (vpmovzxbd, vpsrlvd, vpand, vpslld, vpor) and
extracted; for the 4-index types a scalar chain per index measured as fast or
faster (IQ2_S 525 vs 622 us per 2048 x 5632 mat-vec, one thread; IQ3_S
1122 -> 856 us vectorized).

Generated assembly (IQ2_XXS, host target znver5), per chunk: 4 movzbl + 4
vmovq (grid rows), 4 bextr/and + 4 vmovq (ksigns rows), vpunpcklqdq and
vinserti128 to assemble both vectors, a vpbroadcastw of 2s+1, then per
activation vpsignb, vpmaddubsw and vpdpwssd.  Row assembly dominates, as in
llama.cpp's own AVX2 kernels for these types; kernel-level speed measured
0.93-1.10x ggml's vec_dot (scripts/bench_kernels.py, one thread).
"""
from __future__ import annotations

import sys

import numpy as np
from llvmlite import ir

from ...tables import QK_K, block_fields, quant_info
from . import planes as pl
from . import superblock
from .emit import F16, F32, I8, I16, I32, I64, E, V
from .spec import Spec, register
from .superblock import Block

FAMILY = "iqgrid"
TYPES = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M")
_F = {n: block_fields(n) for n in TYPES}
_BB = {n: quant_info(n).block_bytes for n in TYPES}
IQ1_OFFSET = 9  # IQ1 codes are 8 grid + delta + 9 in [0, 18]; the 9 returns as a min term
_FACTOR = {"IQ2_XXS": 0.125, "IQ2_XS": 0.125, "IQ2_S": 0.125, "IQ3_XXS": 0.25, "IQ3_S": 1.0,
           "IQ1_S": 0.125, "IQ1_M": 0.125}  # kernel float part = d * factor, integer part (2s+1) * ...


def specs():
    """IQ1_M's scales cover 16 weights, so its min term needs activation sums per 16."""
    return [Spec(n, FAMILY, 6, QK_K, 32, QK_K, 16 if n == "IQ1_M" else 32) for n in TYPES]


def repack(spec: Spec, data, rows: int, cols: int, scales=None, biases=None):
    return pl.planes(pl.blocks(data, spec.name, rows, cols).reshape(rows, -1)), cols  # in place


x_widths = superblock.x_widths


# ----------------------------------------------------------------------------- tables
def _grid(name: str) -> np.ndarray:
    """(rows, 8 or 4) int8 lattice grid of an IQ type, from its quant module (imported here, at
    compile time only: a start whose kernels come from numba's cache never loads edgeslim.quants)."""
    from ...quants import iq1, iq2, iq3

    return {**iq1.LATTICES, **iq2.LATTICES, **iq3.LATTICES}[name][0].grid


def _table_bytes(key: str) -> bytes:
    if key == "ksigns":  # 128 rows of 8 int8 +-1: bit j of ksigns[i] set -> lane j negative
        from ...quants.iq2 import KSIGNS

        bits = (KSIGNS[:, None] >> np.arange(8)) & 1
        return np.where(bits == 1, -1, 1).astype(np.int8).tobytes()
    g = _grid(key)
    if key.startswith("IQ1"):  # 8 grid + 9 + delta: rows 0.. delta +1 (bit clear), rows 2048.. delta -1
        g9 = 8 * g.astype(np.int16) + IQ1_OFFSET
        return np.concatenate([g9 + 1, g9 - 1]).astype(np.uint8).tobytes()
    return g.astype(np.int8).tobytes()


def _table(e: E, key: str):
    """i64 address of a constant table in the module being compiled."""
    mod = e.b.module
    name = f"edgeslim_tab_{key}"
    gv = mod.globals.get(name)
    if gv is None:
        data = _table_bytes(key)
        ty = ir.ArrayType(I8, len(data))
        gv = ir.GlobalVariable(mod, ty, name=name)
        gv.linkage, gv.global_constant, gv.align = "internal", True, 64
        gv.initializer = ir.Constant(ty, bytearray(data))
    return e.b.ptrtoint(gv, I64)


def _rows(e: E, tab, idxs, width: int):
    """<32 x i8> made of table rows idxs[k] (width 8: 4 rows; width 4: 8 rows)."""
    et = I64 if width == 8 else I32
    v = ir.Constant(V(et, 32 // width), ir.Undefined)
    for k, idx in enumerate(idxs):
        v = e.b.insert_element(v, e.ld(tab, e.mul(idx, width), et), ir.Constant(I32, k))
    return e.b.bitcast(v, V(I8, 32))


def _vec_rows(e: E, tab, p0, lo_at, n: int, hi, width: int):
    """Table rows for n indices lo | hi: lo the n bytes at p0 + lo_at, hi an <n x i32> of high
    index bits computed in a vector (cheaper than n scalar shift/mask/or chains)."""
    b = e.b
    idx = b.or_(b.zext(e.ld(p0, lo_at, V(I8, n)), V(I32, n)), hi)
    return _rows(e, tab, [b.zext(e.lane(idx, k), I64) for k in range(n)], width)


def _fields_of(e: E, v, shifts, width: int, to: int):
    """<n x i32>: ((v >> shifts[k]) & (2^width - 1)) << to, v an i32 (or <n x i32>) value."""
    n = len(shifts)
    vv = v if isinstance(v.type, ir.VectorType) else e.splat(v, n)
    f = e.b.and_(e.b.lshr(vv, e.vec(V(I32, n), shifts)), e.k(V(I32, n), (1 << width) - 1))
    return e.b.shl(f, e.k(V(I32, n), to)) if to else f


def _bit_signs(e: E, w32):
    """32 sign bits (bit i <-> lane i) -> <32 x i8> of +1 / -1."""
    b = e.b
    spread = e.shuf(b.bitcast(w32, V(I8, 4)), [i // 8 for i in range(32)])
    clear = b.icmp_unsigned("==", b.and_(spread, e.vec(V(I8, 32), [1 << (i % 8) for i in range(32)])),
                            e.k(V(I8, 32), 0))
    return b.select(clear, e.k(V(I8, 32), 1), e.k(V(I8, 32), -1))


# ----------------------------------------------------------------------------- per-type chunk decoding
def _u(e: E, p0, base, off, ty=I8, width=I64):
    """Unsigned scalar field at base + off, widened."""
    return e.b.zext(e.ld(p0, e.add(base, off), ty), width)


def _bits(e: E, v, shift: int, n: int):
    return e.b.and_(e.b.lshr(v, ir.Constant(v.type, shift)), ir.Constant(v.type, (1 << n) - 1))


def _iq2_xxs(e: E, p0, base, f, c):
    """Per 32: u32 of 4 grid index bytes, u32 of 4 x 7-bit sign indices | s << 28."""
    aux = _u(e, p0, base, f["qs"].start + 8 * c + 4, I32)
    idx = [_u(e, p0, base, f["qs"].start + 8 * c + k) for k in range(4)]
    sgn = _rows(e, _table(e, "ksigns"), [_bits(e, aux, 7 * k, 7) for k in range(4)], 8)
    s = e.b.lshr(aux, e.i(28))
    return _rows(e, _table(e, "IQ2_XXS"), idx, 8), sgn, (s, s)


def _iq2_xs(e: E, p0, base, f, c):
    """Per 8: u16 9-bit grid index | 7-bit sign index << 9; 4-bit s per 16."""
    v = [_u(e, p0, base, f["qs"].start + 8 * c + 2 * k, I16) for k in range(4)]
    sgn = _rows(e, _table(e, "ksigns"), [e.b.lshr(x, e.i(9)) for x in v], 8)
    sc = _u(e, p0, base, f["scales"].start + c)
    return _rows(e, _table(e, "IQ2_XS"), [_bits(e, x, 0, 9) for x in v], 8), sgn, (_bits(e, sc, 0, 4), _bits(e, sc, 4, 4))


def _iq2_s(e: E, p0, base, f, c):
    """Per 8: grid index low byte + 2 bits of qh; 8 plain sign bits; 4-bit s per 16."""
    qh = _u(e, p0, base, f["qh"].start + c)
    idx = [e.b.or_(_u(e, p0, base, f["qs"].start + 4 * c + k), e.b.shl(_bits(e, qh, 2 * k, 2), e.i(8)))
           for k in range(4)]
    sgn = _bit_signs(e, e.ld(p0, e.add(base, f["signs"].start + 4 * c), I32))
    sc = _u(e, p0, base, f["scales"].start + c)
    return _rows(e, _table(e, "IQ2_S"), idx, 8), sgn, (_bits(e, sc, 0, 4), _bits(e, sc, 4, 4))


def _iq3_xxs(e: E, p0, base, f, c):
    """Per 4: grid index byte; per 32: u32 of 4 x 7-bit sign indices | s << 28."""
    aux = _u(e, p0, base, f["sas"].start + 4 * c, I32)
    idx = [_u(e, p0, base, f["qs"].start + 8 * c + k) for k in range(8)]
    sgn = _rows(e, _table(e, "ksigns"), [_bits(e, aux, 7 * k, 7) for k in range(4)], 8)
    s = e.b.lshr(aux, e.i(28))
    return _rows(e, _table(e, "IQ3_XXS"), idx, 4), sgn, (s, s)


def _iq3_s(e: E, p0, base, f, c):
    """Per 4: index byte + 1 bit of qh (the 8 indices built as one vector); 8 sign bits; 4-bit s per 32."""
    qh = e.b.zext(e.ld(p0, e.add(base, f["qh"].start + c), I8), I32)
    rows = _vec_rows(e, _table(e, "IQ3_S"), p0, e.add(base, f["qs"].start + 8 * c), 8,
                     _fields_of(e, qh, range(8), 1, 8), 4)
    sgn = _bit_signs(e, e.ld(p0, e.add(base, f["signs"].start + 4 * c), I32))
    s = _bits(e, _u(e, p0, base, f["scales"].start + c // 2), 4 * (c % 2), 4)
    return rows, sgn, (s, s)


def _iq1_s(e: E, p0, base, f, c):
    """Per 32: u16 of 3 x 4 index high bits | s << 12 | delta sign << 15 (index bit 11: table half)."""
    b = e.b
    h = _u(e, p0, base, f["qh"].start + 2 * c, I16)
    neg = b.shl(_bits(e, h, 15, 1), e.i(11))
    idx = [b.or_(b.or_(_u(e, p0, base, f["qs"].start + 4 * c + k), b.shl(_bits(e, h, 3 * k, 3), e.i(8))), neg)
           for k in range(4)]
    s = _bits(e, h, 12, 3)
    return _rows(e, _table(e, "IQ1_S"), idx, 8), None, (s, s)


def _iq1_m(e: E, p0, base, f, c):
    """Per 8: a nibble of qh (3 index high bits | delta sign); 3-bit s per 16 in the u16 scales."""
    b = e.b
    q2 = _u(e, p0, base, f["qh"].start + 2 * c, I16)
    idx = [b.or_(_u(e, p0, base, f["qs"].start + 4 * c + k),
                 b.or_(b.shl(_bits(e, q2, 4 * k, 3), e.i(8)), b.shl(_bits(e, q2, 4 * k + 3, 1), e.i(11))))
           for k in range(4)]
    s = [_bits(e, _u(e, p0, base, f["scales"].start + 2 * (g // 4), I16), 3 * (g % 4), 3) for g in (2 * c, 2 * c + 1)]
    return _rows(e, _table(e, "IQ1_M"), idx, 8), None, tuple(s)


# weights per integer scale: (s_lo, s_hi) of a chunk are one value for the 32-weight ones
SCALE_ELEMS = {"IQ2_XXS": 32, "IQ2_XS": 16, "IQ2_S": 16, "IQ3_XXS": 32, "IQ3_S": 32, "IQ1_S": 32, "IQ1_M": 16}


def scale_groups(spec: Spec) -> list[int]:
    """The scale group of each 16-byte run (half j % 2 of chunk j // 2; tiled.py)."""
    return [j // 2 if SCALE_ELEMS[spec.name] == 32 else j for j in range(16)]


_CHUNK = {"IQ2_XXS": _iq2_xxs, "IQ2_XS": _iq2_xs, "IQ2_S": _iq2_s, "IQ3_XXS": _iq3_xxs, "IQ3_S": _iq3_s,
          "IQ1_S": _iq1_s, "IQ1_M": _iq1_m}


def _chunk(spec: Spec, e: E, P, base, c: int):
    """Chunk c of the super-block at byte `base`: (codes, xsigns or None, (s_lo, s_hi) raw scales)."""
    return _CHUNK[spec.name](e, P[0], base, _F[spec.name], c)


def _iq1_odd(spec: Spec, e: E, P, base):
    """IQ1: <16 x i16> of 2 s + 1 per 16-weight group of the super-block, decoded as one vector."""
    b, f, p0 = e.b, _F[spec.name], P[0]
    if spec.name == "IQ1_S":  # s = qh[j] >> 12 & 7 for both halves of sub-block j
        v = e.shuf(e.ld(p0, e.add(base, f["qh"].start), V(I16, 8)), [g // 2 for g in range(16)])
        s = b.and_(b.lshr(v, e.k(V(I16, 16), 12)), e.k(V(I16, 16), 7))
    else:  # s_g = scales_u16[g // 4] >> 3 (g % 4) & 7
        v = e.shuf(e.ld(p0, e.add(base, f["scales"].start), V(I16, 4)), [g // 4 for g in range(16)])
        s = b.and_(b.lshr(v, e.vec(V(I16, 16), [3 * (g % 4) for g in range(16)])), e.k(V(I16, 16), 7))
    return b.add(b.shl(s, e.k(V(I16, 16), 1)), e.k(V(I16, 16), 1))


def _d(spec: Spec, e: E, P, base):
    """The super-block's f16 d as float (IQ1_M: assembled from the scales' top nibbles)."""
    b, p0, f = e.b, P[0], _F[spec.name]
    if spec.name != "IQ1_M":
        return b.fpext(e.ld(p0, e.add(base, f["d"].start), F16), F32)
    sc = [e.ld(p0, e.add(base, f["scales"].start + 2 * i), I16) for i in range(4)]
    bits = b.lshr(sc[0], ir.Constant(I16, 12))
    for i, sh in ((1, 8), (2, 4), (3, 0)):
        bits = b.or_(bits, b.and_(b.lshr(sc[i], ir.Constant(I16, sh)), ir.Constant(I16, 0xF << (12 - sh))))
    return b.fpext(b.bitcast(bits, F16), F32)


def _scale_vec(e: E, s_lo, s_hi):
    """<16 x i16>: 2 s + 1 of the chunk's first 16 weights in lanes 0-7, of the last 16 in lanes 8-15."""
    b = e.b
    odd = [b.add(b.shl(b.trunc(s, I16), ir.Constant(I16, 1)), ir.Constant(I16, 1)) for s in (s_lo, s_hi)]
    v = b.insert_element(ir.Constant(V(I16, 16), ir.Undefined), odd[0], ir.Constant(I32, 0))
    v = b.insert_element(v, odd[1], ir.Constant(I32, 8))
    return e.shuf(v, [0] * 8 + [8] * 8)


def block(spec: Spec, e: E, P, sb) -> Block:
    b = e.b
    base = e.mul(sb, _BB[spec.name])
    parts = [_chunk(spec, e, P, base, c) for c in range(8)]
    d = b.fmul(_d(spec, e, P, base), ir.Constant(F32, _FACTOR[spec.name]))
    codes = [p[0] for p in parts]
    if not spec.name.startswith("IQ1"):
        return Block(codes, d, scales=[_scale_vec(e, *p[2]) for p in parts], xsigns=[p[1] for p in parts])
    odd = _iq1_odd(spec, e, P, base)  # codes carry +9: min term 9 (2s + 1) per scale group
    scales = [e.shuf(odd, [2 * c] * 8 + [2 * c + 1] * 8) for c in range(8)]
    G = QK_K // spec.sgroup
    mins = b.fmul(b.uitofp(e.shuf(odd, range(0, 16, 16 // G)), V(F32, G)), e.k(V(F32, G), float(IQ1_OFFSET)))
    return Block(codes, d, scales=scales, mins=mins, dmin=d, offset=IQ1_OFFSET)


def _db(spec: Spec, e: E, d, s):
    """The sub-block's float scale in gguf-py's operation order."""
    b, name = e.b, spec.name
    sf = b.uitofp(s, F32)
    if name.startswith("IQ2") or name == "IQ3_XXS":
        k = 0.25 if name.startswith("IQ2") else 0.5
        return b.fmul(b.fmul(d, b.fadd(ir.Constant(F32, 0.5), sf)), ir.Constant(F32, k))
    return b.fmul(d, b.uitofp(b.add(b.shl(s, e.i(1)), e.i(1)), F32))  # IQ3_S, IQ1: d * (2s + 1)


def deq_block(spec: Spec, e: E, P, sb, store):
    """Exact: (db * grid) * sign, or dl * (grid +- 1/8) (the table holds 8 grid +- 1, scaled by 1/8 exactly)."""
    b = e.b
    base = e.mul(sb, _BB[spec.name])
    d = _d(spec, e, P, base)
    for c in range(8):
        codes, sgn, (s_lo, s_hi) = _chunk(spec, e, P, base, c)
        db = [_db(spec, e, d, s) for s in (s_lo, s_hi)]
        lanes = b.shuffle_vector(e.splat(db[0], 16), e.splat(db[1], 16), e.vec(V(I32, 32), list(range(16)) +
                                                                                list(range(16, 32))))
        if spec.name.startswith("IQ1"):  # (code - 9) / 8 = grid +- 1/8, exactly
            q = b.sub(b.zext(codes, V(I32, 32)), e.k(V(I32, 32), IQ1_OFFSET))
            store(c, b.fmul(lanes, b.fmul(b.sitofp(q, V(F32, 32)), e.k(V(F32, 32), 0.125))))
        else:
            w = b.fmul(lanes, b.uitofp(codes, V(F32, 32)))
            store(c, b.fmul(w, b.sitofp(sgn, V(F32, 32))))


def row_body(spec: Spec, e: E, P, X, T, ncols):
    return superblock.row_body(spec, e, P, X, T, ncols, sys.modules[__name__])


def deq_body(spec: Spec, e: E, P, out, ncols):
    superblock.deq_body(spec, e, P, out, ncols, sys.modules[__name__])


register(FAMILY, sys.modules[__name__], specs())
