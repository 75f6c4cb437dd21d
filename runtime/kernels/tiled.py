"""Prompts on decoded row tiles: the super-block and 32-wide families on AVX512-VNNI hosts.

The batched row kernels (superblock.py, grouped.py) decode a block once for 16
activations but then spend ~19 instructions per activation and super-block on
4 vpdpbusd: the horizontal fold, the scale multiply, int -> float and the fmas
all run per (row, activation).  Here 64 rows are decoded once per mat-mul into
a tile of signed int8 codes with their scales, and a register-blocked
micro-kernel multiplies it with the activations laid out as an outer product
(16 activations x 4 bytes per 512-bit vector), so every step after the dot
product is shared by 16 activations.  Tiles hold 8 rows side by side (unit u of
row i at byte 32u + 4i), so the 8 rows' weight bytes are one base register and
constant offsets:

    super-block families ("sb": K, IQ4_XS, lattice, ternary), per row and super-block:
        tq   256 int8   codes (x-signs applied, code offsets taken off: Block.offset), tile order
        ts   16 int32   the integer scale of each 16-byte run (1 without scales)
        tc   int32      128 * sum_j ts_j * (sum of run j's codes): the activations' +128
        td   float      d;    tm  G floats  -dmin * min_g (true mins: Q2_K, Q4_K, Q5_K)
      micro-kernel, 8 rows x 16 activations:
        for each pair of runs: acc_r = sum_u vpdpbusd(xt[u], broadcast(tq[r, u]))   8 per row
                               isum_r += acc_r * ts[r, run]  (vpmulld, once per scale group)
        out_r += float(isum_r - tc[r]) * (td[r] * xdt)  +  sum_g tm[r, g] * xst[g]
    32-wide family ("q32": Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL), per row and block of 32:
        32 int8 codes (legacy.deq_int), tc = 128 * their sum, td = d, tm = m (Q4_1, Q5_1)
        out_r += float(sum_u vpdpbusd(...) - tc[r]) * (td[r] * xdt)  (+ tm[r] * xst)
    activations (`_transpose_x`, per 16): xt unit u = tile bytes 4u..4u+3 of each activation
        + 128 (u8: vpdpbusd multiplies unsigned by signed bytes), xdt their int8 scales, xst
        their group sums.

Tile order: a run of 16 bytes must hold one scale.  Families whose scales are
per chunk half (IQ4_XS, lattice) start from kernel order (run j = half j % 2 of
chunk j // 2); those with one scale per i16 lane shared by all chunks
(`SCALE_PER_LANE`: the interleaved k-quants) from lane m of the 8 chunks as run
m; then the runs of one scale group (the family's `scale_groups`) are put side
by side so one vpmulld serves 32 bytes (none per run for ternary).  32-wide
units: block l (i32 lane l of the 8 chunks) as 32 consecutive bytes; a row's
tail blocks in stored order.  Integer ranges (largest cases): a run's sum <=
255 * 127 * 16, times |scale| <= 128 (Q6_K) over 16 runs, stays below 2^31.

Measured (512 x 2048 by 5632 x 2048, one thread, the other core busy, row kernels -> tiles):
Q4_K 1.56-1.72x, Q5_K 1.63x, Q6_K 2.18x, Q3_K 2.03x, Q2_K 1.47x, IQ4_XS 2.13x, IQ2/IQ3/IQ1
2.6-3.5x, TQ1_0 2.06x, TQ2_0 1.85x, Q4_0 1.61x, Q4_1 1.78x, Q5_0 2.29x, Q5_1 1.73x, Q8_0
1.82x, IQ4_NL 2.03x.  Whole 512-token TinyLlama IQ4_XS prefill, one thread: 82 -> 148 tok/s.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ...tables import QK_K
from .emit import F16, F32, I8, I32, I64, USE_VNNI512, E, V, array_addr
from ..threads import serial_and_parallel
from .spec import Spec, SpecType, family
from .xquant import empty_i8_64, quant_x

COLS = 16  # activations per micro-kernel pass: one <16 x i32> per row
ROWS = 8  # weight rows per micro-kernel pass: 8 independent vpdpbusd chains, 8 + 8 + 8 zmm live
RUNS = 16  # 16-byte runs per super-block, one integer scale each
UNITS = QK_K // 4  # 4-byte units per super-block (one vpdpbusd lane each)
GROUP = 32  # the 32-wide family: bytes per block (one float d each)


# ----------------------------------------------------------------------------- layouts (numpy)
@dataclass(frozen=True)
class Layout:
    """What one weight's tiles hold per row: `order` (colsp,) tile position -> kernel position;
    entries per row of ts (integer run scales), of tc and td (one per super-block, or per 32-wide
    block), of tm (mins or biases; 0: none)."""

    order: np.ndarray
    n_scale: int
    n_block: int
    n_min: int


def _base_runs(spec: Spec) -> np.ndarray:
    """(16, 16) kernel positions of the 16 one-scale runs: lane m of the 8 chunks for families with
    one scale per i16 lane (`SCALE_PER_LANE`), else half j % 2 of chunk j // 2."""
    if not getattr(family(spec), "SCALE_PER_LANE", False):
        return np.arange(QK_K).reshape(RUNS, 16)
    m, c, h = np.meshgrid(np.arange(16), np.arange(8), np.arange(2), indexing="ij")
    return (32 * c + 2 * m + h).reshape(RUNS, 16)


def run_order(spec: Spec) -> tuple[list[int], int]:
    """(base runs in tile order, runs per scale): runs of one scale group (the family's
    `scale_groups`) placed next to each other, so one vpmulld serves all of them."""
    groups = family(spec).scale_groups(spec)
    order = sorted(range(RUNS), key=lambda j: groups[j])
    return order, RUNS // len(set(groups))


def tile_order(spec: Spec) -> np.ndarray:
    """(256,) tile position -> kernel position inside a super-block (module doc)."""
    return _base_runs(spec)[run_order(spec)[0]].reshape(-1)


def _unit_order() -> np.ndarray:
    """(256,) tile position -> kernel position in a 32-wide family's unit: block l (i32 lane l of
    the 8 chunks, chunk c lane j = element 8j + c) as 32 consecutive bytes."""
    l, c, k = np.meshgrid(np.arange(8), np.arange(8), np.arange(4), indexing="ij")
    return (32 * c + 4 * l + k).reshape(-1)


def n_groups(spec: Spec) -> int:
    """Min-term groups per super-block (0 when the family has no true mins)."""
    has = getattr(family(spec), "has_mins", None)
    return QK_K // spec.sgroup if has is not None and has(spec) else 0


def _kind(spec: Spec) -> str | None:
    """"sb" (256-weight super-blocks), "q32" (32-wide blocks) or None (no tiled path)."""
    fam = family(spec)
    if hasattr(fam, "block"):
        return "sb"
    return "q32" if getattr(fam, "TILED_BLOCKS", False) else None


@functools.cache
def layout(spec: Spec, colsp: int) -> Layout | None:
    """The tile layout of a weight of padded row length colsp, or None where the tiled path does not
    run: other families, and hosts without the 512-bit vpdpbusd (one object per spec and length)."""
    kind = _kind(spec)
    if kind is None or not (USE_VNNI512 and spec.vnni and spec.avx512 and not spec.portable):
        return None
    if kind == "q32" and (spec.unit, spec.stride, spec.group) != (QK_K, 8, GROUP):  # `_unit_order`'s layout
        return None
    if kind == "sb":
        order = (np.arange(0, colsp, QK_K)[:, None] + tile_order(spec)[None, :]).reshape(-1)
        return Layout(order, colsp // 16, colsp // QK_K, colsp // QK_K * n_groups(spec))
    nmain = colsp // QK_K * QK_K
    order = np.arange(colsp)
    order[:nmain] = (np.arange(0, nmain, QK_K)[:, None] + _unit_order()[None, :]).reshape(-1)
    nblk = colsp // GROUP
    return Layout(order, 0, nblk, nblk if family(spec).stored_bias(spec) else 0)


# ----------------------------------------------------------------------------- unpack (LLVM IR)
def _signed_codes(e: E, blk):
    """The block's 8 chunk codes as signed int8: x-signs applied, the code offset taken off."""
    b, codes = e.b, blk.codes
    if blk.xsigns is not None:
        codes = [e.sign(q, s) for q, s in zip(codes, blk.xsigns)]
    if blk.offset:
        codes = [b.sub(q, e.k(q.type, blk.offset)) for q in codes]
    return codes


def _run_scales(e: E, blk, per_lane: bool):
    """16 i32 run scales (module doc), or None when every scale is 1."""
    b = e.b
    if per_lane:
        return [b.sext(e.lane(blk.scale_all, m), I32) for m in range(RUNS)]
    if blk.scales is None:
        return None
    return [b.sext(e.lane(blk.scales[j // 2], 8 * (j % 2)), I32) for j in range(RUNS)]


def _store_units(e: E, tq, u0, codes):
    """Store a <4n x i8> of tile codes as n 4-byte units from unit u0 (every ROWS-th entry)."""
    units = e.b.bitcast(codes, V(I32, codes.type.count // 4))
    for u in range(codes.type.count // 4):
        e.st(tq, e.mul(e.add(u0, u), 4 * ROWS), e.lane(units, u))


def _code_sums(e: E, codes, n: int):
    """<len / n x i32> sums of each n consecutive codes (signed bytes; n a multiple of 4): vpdpbusd
    by ones gives each 4-byte unit's sum, then neighbouring lanes are added (a sext + reduction per
    run cost IQ4_XS's unpack half its time)."""
    b, total = e.b, codes.type.count
    width = 64 if total % 64 == 0 else 32
    ones = e.k(V(I8, width), 1)
    parts = [e.dpbusd(None, ones, e.shuf(codes, range(k, k + width))) for k in range(0, total, width)]
    while len(parts) > 1:
        parts = e.pairs(parts)
    v = parts[0]  # <total / 4 x i32>: unit sums
    for _ in range(n.bit_length() - 3):  # 4 -> n bytes per lane
        m = v.type.count
        v = b.add(e.shuf(v, range(0, m, 2)), e.shuf(v, range(1, m, 2)))
    return v


def _reduce_add(e: E, v):
    return e.b.call(e.fn(f"llvm.vector.reduce.add.v{v.type.count}i32", I32, [v.type]), [v])


def _unpack_sb(spec: Spec, e: E, P, out, ncols):
    """A super-block family's tile row (module doc): out = (tq, ts, tc, td, tm) at this row's lane."""
    b = e.b
    fam = family(spec)
    G = n_groups(spec)
    tq, ts, tc, td, tm = out
    order = [int(v) for v in tile_order(spec)]
    runs = run_order(spec)[0]
    per_lane = getattr(fam, "SCALE_PER_LANE", False)
    with cgutils.for_range(b, b.udiv(ncols, e.i(QK_K))) as loop:
        sb = loop.index
        blk = fam.block(spec, e, P, sb)
        whole = _signed_codes(e, blk)
        while len(whole) > 1:  # one <256 x i8> in kernel order, then one permutation
            whole = e.pairs(whole)
        tile = whole[0] if order == list(range(QK_K)) else e.shuf(whole[0], order)
        _store_units(e, tq, e.mul(sb, UNITS), tile)
        scales = _run_scales(e, blk, per_lane)
        sums = _code_sums(e, tile, 16)  # <16 x i32>, run j in lane j
        vec = ir.Constant(V(I32, RUNS), ir.Undefined)
        for j, base_run in enumerate(runs):
            sc = ir.Constant(I32, 1) if scales is None else scales[base_run]
            e.st(ts, e.mul(e.add(e.mul(sb, RUNS), j), 4 * ROWS), sc)
            vec = b.insert_element(vec, sc, ir.Constant(I32, j))
        corr = _reduce_add(e, sums if scales is None else b.mul(sums, vec))
        e.st(tc, e.mul(sb, 4 * ROWS), b.shl(corr, ir.Constant(I32, 7)))
        e.st(td, e.mul(sb, 4 * ROWS), blk.d)
        if G:
            mins = b.fmul(e.splat(b.fsub(ir.Constant(F32, 0.0), blk.dmin), G), blk.mins)  # -dmin * min_g
            for g in range(G):
                e.st(tm, e.mul(e.add(e.mul(sb, G), g), 4 * ROWS), e.lane(mins, g))


def _unpack_q32(spec: Spec, e: E, P, out, ncols):
    """A 32-wide family's tile row: per block, 32 signed codes (the family's `deq_int`: offsets
    taken off, IQ4_NL's values looked up), tc = 128 * their sum, td = d, tm = the stored bias (m of
    Q4_1 / Q5_1)."""
    b = e.b
    fam = family(spec)
    tq, _, tc, td, tm = out
    order = [int(v) for v in _unit_order()]
    bias = fam.stored_bias(spec)  # code offsets are in deq_int's codes; only a stored m remains

    def block_facts(g, csum):
        e.st(tc, e.mul(g, 4 * ROWS), b.shl(csum, ir.Constant(I32, 7)))
        e.st(td, e.mul(g, 4 * ROWS), b.fpext(e.ld(P[2], e.mul(g, 2), F16), F32))
        if bias:
            e.st(tm, e.mul(g, 4 * ROWS), b.fpext(e.ld(P[3], e.mul(g, 2), F16), F32))

    def signed(q):
        return b.trunc(fam.deq_int(spec, e, q), V(I8, 32))

    nunit = b.udiv(ncols, e.i(QK_K))
    with cgutils.for_range(b, nunit) as loop:
        u = loop.index
        whole = [signed(q) for q in fam.codes(spec, e, P, u)]
        while len(whole) > 1:
            whole = e.pairs(whole)
        tile = e.shuf(whole[0], order)
        _store_units(e, tq, e.mul(u, UNITS), tile)
        sums = _code_sums(e, tile, GROUP)  # <8 x i32>, block k in lane k
        for k in range(8):
            block_facts(e.add(e.mul(u, 8), k), e.lane(sums, k))
    ntail = b.udiv(b.sub(ncols, e.mul(nunit, QK_K)), e.i(GROUP))
    with cgutils.for_range(b, ntail) as loop:
        i = loop.index
        codes = signed(fam.tail_codes(spec, e, P, nunit, i)[0])
        g = e.add(e.mul(nunit, 8), i)
        _store_units(e, tq, e.mul(g, GROUP // 4), codes)
        block_facts(g, e.lane(_code_sums(e, codes, GROUP), 0))


def _emitter(sp: Spec, context, builder, signature, args):
    """(E for the spec, arg(i)): an array argument's data address, or an integer argument as intp."""
    tys = signature.args

    def arg(i):
        if isinstance(tys[i], types.Array):
            return array_addr(context, builder, tys[i], args[i])[0]
        return context.cast(builder, args[i], tys[i], types.intp)

    return E(builder, sp.portable, sp.vnni, sp.avx512), arg


@intrinsic
def _unpack_row(typingctx, spec, p0, p1, p2, p3, p4, tq, ts, tc, td, tm, lane, ncols):
    """Row (p0..p4, padded length ncols) -> row `lane` of a row group's tile (tq int8, ts, tc int32,
    td, tm float32; 1-D; every entry 4 bytes per row, ROWS rows side by side)."""
    if not isinstance(spec, SpecType):
        return None
    sp = spec.spec
    sig = types.void(spec, p0, p1, p2, p3, p4, tq, ts, tc, td, tm, lane, ncols)

    def codegen(context, builder, signature, args):
        e, arg = _emitter(sp, context, builder, signature, args)
        lane_, ncols_ = arg(11), arg(12)
        out = [e.add(arg(i), e.mul(lane_, 4)) for i in range(6, 11)]
        (_unpack_sb if _kind(sp) == "sb" else _unpack_q32)(sp, e, [arg(i) for i in range(1, 6)], out, ncols_)
        return context.get_dummy_value()

    return sig, codegen


# ----------------------------------------------------------------------------- micro-kernel (LLVM IR)
class _Rows:
    """ROWS vectors in stack slots (LLVM keeps them in registers)."""

    def __init__(self, e: E, ty):
        self.e, self.ty = e, ty
        self.slots = cgutils.alloca_once(e.b, ty, size=ROWS)

    def slot(self, i):
        return self.e.b.gep(self.slots, [ir.Constant(I64, i)])

    def zero(self):
        for i in range(ROWS):
            self.e.b.store(self.e.k(self.ty, 0.0 if self.ty.element == F32 else 0), self.slot(i))

    def get(self, i):
        return self.e.b.load(self.slot(i))

    def put(self, i, v):
        self.e.b.store(v, self.slot(i))


def _dots(e: E, tq, xt, u0, n):
    """The 8 rows' <16 x i32> sums over units u0 .. u0 + n - 1 (n vpdpbusd per row, the activation
    vector of each unit loaded once for the 8 rows, the weight bytes broadcast from memory)."""
    b = e.b
    wq, xq = e.add(tq, e.mul(u0, 4 * ROWS)), e.add(xt, e.mul(u0, 64))
    acc = [None] * ROWS
    for k in range(n):
        xv = e.ld(xq, 64 * k, V(I8, 64))
        for i in range(ROWS):
            w4 = e.ld(wq, 4 * (k * ROWS + i), I32)
            acc[i] = e.dpbusd(acc[i], xv, b.bitcast(e.splat(w4, 16), V(I8, 64)))
    return acc


def _entry(e: E, base, idx, i, ty):
    """Entry idx of row i of a row group's per-row array (ROWS rows side by side)."""
    return e.ld(base, e.mul(e.add(e.mul(idx, ROWS), i), 4), ty)


def _bcast(e: E, v):
    return e.splat(v, COLS)


def _tile_sb(spec: Spec, e: E, T_, X_, ncols, out: _Rows):
    """A super-block family's row group x 16 activations (module doc)."""
    b = e.b
    tq, ts, tc, td, tm = T_
    xt, xdt, xst = X_
    G = n_groups(spec)
    isums = _Rows(e, V(I32, COLS))
    merge = run_order(spec)[1]
    step = 2 if merge >= 2 else 1  # runs per iteration; one vpmulld per row unless merge == 16
    with cgutils.for_range(b, b.udiv(ncols, e.i(QK_K))) as loop:
        sb = loop.index
        isums.zero()
        # a loop over runs, not unrolled: unrolled, LLVM hoists all 64 activation loads of the
        # super-block ahead of the dot steps and spills them (read from the assembly)
        with cgutils.for_range(b, ir.Constant(I64, RUNS // step)) as runs:
            run = e.add(e.mul(sb, RUNS), e.mul(runs.index, step))
            acc = _dots(e, tq, xt, e.mul(run, 4), 4 * step)
            for i in range(ROWS):
                if merge < RUNS:
                    acc[i] = b.mul(acc[i], _bcast(e, _entry(e, ts, run, i, I32)))
                isums.put(i, b.add(isums.get(i), acc[i]))
        dx = e.ld(xdt, e.mul(sb, 4 * COLS), V(F32, COLS))
        xs = [e.ld(xst, e.mul(e.add(e.mul(sb, G), g), 4 * COLS), V(F32, COLS)) for g in range(G)]
        for i in range(ROWS):
            isum = isums.get(i)
            if merge == RUNS:  # one scale for the whole super-block
                isum = b.mul(isum, _bcast(e, _entry(e, ts, e.mul(sb, RUNS), i, I32)))
            f = e.cvt(b.sub(isum, _bcast(e, _entry(e, tc, sb, i, I32))))
            a = e.fma(f, b.fmul(_bcast(e, _entry(e, td, sb, i, F32)), dx), out.get(i))
            for g in range(G):
                a = e.fma(_bcast(e, _entry(e, tm, e.add(e.mul(sb, G), g), i, F32)), xs[g], a)
            out.put(i, a)


def _tile_q32(spec: Spec, e: E, T_, X_, ncols, out: _Rows):
    """A 32-wide family's row group x 16 activations: per block, 8 vpdpbusd per row, then
    out += float(acc - tc) * (d * dx)  (+ m * xsum where the family has a bias)."""
    b = e.b
    tq, _, tc, td, tm = T_
    xt, xdt, xst = X_
    bias = family(spec).stored_bias(spec)
    with cgutils.for_range(b, b.udiv(ncols, e.i(GROUP))) as loop:
        g = loop.index
        acc = _dots(e, tq, xt, e.mul(g, GROUP // 4), GROUP // 4)
        dx = e.ld(xdt, e.mul(g, 4 * COLS), V(F32, COLS))
        xs = e.ld(xst, e.mul(g, 4 * COLS), V(F32, COLS)) if bias else None
        for i in range(ROWS):
            f = e.cvt(b.sub(acc[i], _bcast(e, _entry(e, tc, g, i, I32))))
            a = e.fma(f, b.fmul(_bcast(e, _entry(e, td, g, i, F32)), dx), out.get(i))
            if bias:
                a = e.fma(_bcast(e, _entry(e, tm, g, i, F32)), xs, a)
            out.put(i, a)


@intrinsic
def _tile_block(typingctx, spec, tq, ts, tc, td, tm, xt, xdt, xst, y, c0, r0, nr):
    """y[c0 + k, r0 + i] = row i of the row group's tile . activation k of the block, for the nr
    valid rows and the activations y has (tile rows 1-D; xt (colsp / 4, 64) u8, xdt (n_block, 16),
    xst (n_min, 16))."""
    if not isinstance(spec, SpecType):
        return None
    sp = spec.spec
    sig = types.void(spec, tq, ts, tc, td, tm, xt, xdt, xst, y, c0, r0, nr)

    def codegen(context, builder, signature, args):
        e, arg = _emitter(sp, context, builder, signature, args)
        b, tys = builder, signature.args
        T_, X_ = [arg(i) for i in range(1, 6)], [arg(i) for i in (6, 7, 8)]
        c0_, r0_, nr_ = arg(10), arg(11), arg(12)
        ncols = b.mul(cgutils.unpack_tuple(builder, context.make_array(tys[6])(context, builder, args[6]).shape)[0],
                      ir.Constant(I64, 4))
        out = _Rows(e, V(F32, COLS))
        out.zero()
        (_tile_sb if _kind(sp) == "sb" else _tile_q32)(sp, e, T_, X_, ncols, out)
        yarr = context.make_array(tys[9])(context, builder, args[9])
        T = cgutils.unpack_tuple(builder, yarr.shape)[0]
        ystr = cgutils.unpack_tuple(builder, yarr.strides)
        ybase = builder.ptrtoint(yarr.data, I64)
        for i in range(ROWS):
            ok_r = b.icmp_signed("<", ir.Constant(I64, i), nr_)
            v = out.get(i)
            for k in range(COLS):
                col = e.add(c0_, k)
                with cgutils.if_likely(b, b.and_(ok_r, b.icmp_signed("<", col, T))):
                    e.st(ybase, e.add(e.mul(col, ystr[0]), e.mul(e.add(r0_, i), 4)), e.lane(v, k))
        return context.get_dummy_value()

    return sig, codegen


# ----------------------------------------------------------------------------- driver (njit)
@njit(cache=True)
def _transpose_x(xq, xd, xs, order, xt, xdt, xst, cb):
    """Quantized activations (kernel order) -> the micro-kernel's layout for column block cb: xt
    (colsp / 4, 64) bytes x + 128 in tile order, xdt (n_block, 16) their scales, xst (n_min, 16)
    their group sums; the activations past T are zero.  Moves bytes only (no rounding)."""
    T, n = xq.shape
    nblock, nmin = xdt.shape[0], xst.shape[0]
    flip = np.int8(-128)
    zero = np.zeros(n, np.int8)  # the codes of an activation past T
    for k in range(COLS):
        t = cb * COLS + k
        live = t < T
        xqt = xq[t] if live else zero
        for u in range(n // 4):
            for j in range(4):
                xt[u, 4 * k + j] = xqt[order[4 * u + j]] ^ flip
        for i in range(nblock):
            xdt[i, k] = xd[t, i] if live else np.float32(0.0)
        for i in range(nmin):
            xst[i, k] = xs[t, i] if live else np.float32(0.0)


def _tiled_body(spec, p0, p1, p2, p3, p4, x, rows, nq, nd, ns, xblk, sgroup, unit, order, torder, n_scale,
                n_block, n_min):
    """(T, rows) = x W^T through row tiles (module doc), parallel over blocks of ROW_BLOCK rows."""
    T = x.shape[0]
    y = np.empty((T, rows), np.float32)
    xq = empty_i8_64(T, nq)
    xd = np.empty((T, nd), np.float32)
    xs = np.empty((T, ns), np.float32)
    quant_x(x, xblk, sgroup, unit, order, xq, xd, xs)
    ncb = (T + COLS - 1) // COLS
    xt = empty_i8_64(ncb * nq // 4, 64).reshape((ncb, nq // 4, 64))
    xdt = np.empty((ncb, n_block, COLS), np.float32)
    xst = np.empty((ncb, max(1, n_min), COLS), np.float32)
    for cb in prange(ncb):
        _transpose_x(xq, xd, xs, torder, xt[cb], xdt[cb], xst[cb, :n_min], cb)
    ng = ROW_BLOCK // ROWS
    for blk in prange((rows + ROW_BLOCK - 1) // ROW_BLOCK):
        r0 = blk * ROW_BLOCK
        nrb = min(ROW_BLOCK, rows - r0)
        tq = np.empty((ng, nq * ROWS), np.int8)  # row group g: unit u of row i at 32u + 4i
        ts = np.empty((ng, max(1, n_scale) * ROWS), np.int32)
        tc = np.empty((ng, n_block * ROWS), np.int32)
        td = np.empty((ng, n_block * ROWS), np.float32)
        tm = np.empty((ng, max(1, n_min) * ROWS), np.float32)
        for r in range((nrb + ROWS - 1) // ROWS * ROWS):  # a last group's missing rows repeat its last row
            s = r0 + min(r, nrb - 1)
            g, i = r // ROWS, r % ROWS
            _unpack_row(spec, p0[s], p1[s], p2[s], p3[s], p4[s], tq[g], ts[g], tc[g], td[g], tm[g], i, nq)
        for cb in range(ncb):
            for g in range((nrb + ROWS - 1) // ROWS):
                _tile_block(spec, tq[g], ts[g], tc[g], td[g], tm[g], xt[cb], xdt[cb], xst[cb], y, cb * COLS,
                            r0 + g * ROWS, min(ROWS, nrb - g * ROWS))
    return y


ROW_BLOCK = 64  # rows decoded into one tile (64 x 5632 codes: 352 KB, in L2)
# Fewest activations for which the tiles pay for their decoding: 5632 x 2048, one thread, tiled against
# the row kernels (Q4_K / Q6_K / Q4_0 / IQ2_XXS): T = 24 0.72 / 0.92 / 0.70 / 1.19x, 32 0.90 / 1.01 / 0.97 /
# 1.65x, 48 1.21 / 1.22 / 1.22 / 1.79x, 64 1.17 / 1.42 / 1.13 / 1.88x
MIN_T = 48
_tiled_serial, _tiled = serial_and_parallel(_tiled_body, fastmath=True)
TILED = (_tiled_serial, _tiled)  # indexed by threads.SERIAL / PARALLEL
