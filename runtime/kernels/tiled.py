"""Tiled prefill for the 256-weight super-block families on AVX512-VNNI hosts.

The batched row kernels (superblock.row_body) decode a super-block once for 16
activations but then spend ~19 instructions per activation and super-block on
4 vpdpbusd: the horizontal fold, the scale multiply, int -> float and the fmas
all run per (row, activation).  Here a block of rows is decoded once per
mat-mul into a tile of int8 codes with one integer scale per 16-byte run, and
a register-blocked micro-kernel multiplies it with the activations laid out
as an outer product, so every instruction after the dot step is shared by 16
activations:

    tile (per row, per super-block), written by `_unpack_row`:
        tq   256 int8    signed codes (x-signs applied, code offsets taken off), in tile order
        ts   16 int32    the integer scale of each 16-byte run (1 without scales)
        tc   int32       128 * sum_j ts_j * (sum of run j's codes): the +128 activation bias
        td   float       d;   tm  G floats  -dmin * min_g (families with true mins)
    activations (per 16 activations, per super-block), written by `_transpose_x`:
        xt   64 x <16 activations x 4 bytes>  unit u = tile bytes 4u..4u+3 of each activation, + 128 (u8)
        xdt  16 floats   the activations' int8 scale;   xst  G x 16 floats: their group sums

    micro-kernel (`_tile_block`), 8 rows x 16 activations, per super-block:
        for run j: acc_r = sum_{u in j} vpdpbusd(xt[u], broadcast(tq[r, 4u:4u+4]))     4 per row
                   isum_r += acc_r * ts[r, j]                                         vpmulld
        out_r += float(isum_r - tc[r]) * (td[r] * xdt)  +  sum_g tm[r, g] * xst[g]

Tile order: runs must hold one scale.  Families whose scales are per chunk half
(IQ4_XS, lattice) keep kernel order (run j = half j % 2 of chunk j // 2);
families with one scale per i16 lane shared by all chunks (`Block.scale_all`:
the interleaved k-quants) take lane m of the 8 chunks as run m.  The
activations' +128 (vpdpbusd multiplies unsigned by signed bytes) comes back out
through tc, one integer per row and super-block.  Integer ranges (largest
cases): a run's acc <= 255 * 127 * 16, times |scale| <= 127 (Q6_K) over 16 runs
stays below 2^31.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ...tables import QK_K
from .emit import F32, I8, I32, I64, USE_VNNI512, E, V, array_addr
from ..threads import serial_and_parallel
from .spec import Spec, SpecType, family
from .xquant import empty_i8_64, quant_x

COLS = 16  # activations per micro-kernel pass: one <16 x i32> per row
ROWS = 8  # weight rows per micro-kernel pass: 8 independent vpdpbusd chains, 8 + 8 + 8 zmm live
RUNS = 16  # 16-byte runs per super-block, one integer scale each
UNITS = QK_K // 4  # 4-byte units per super-block (one vpdpbusd lane each)


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


def n_groups(spec: Spec) -> int:
    """Min-term groups per super-block (0 when the family has no true mins)."""
    has = getattr(family(spec), "has_mins", None)
    return QK_K // spec.sgroup if has is not None and has(spec) else 0


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


def unpack_body(spec: Spec, e: E, P, out, lane, nsb):
    """Emit row `lane` of a row group's tile: out = (tq, ts, tc, td, tm) addresses (module doc)."""
    b = e.b
    fam = family(spec)
    G = n_groups(spec)
    tq, ts, tc, td, tm = (e.add(a, e.mul(lane, 4)) for a in out)  # every entry is 4 bytes per row
    order = [int(v) for v in tile_order(spec)]
    runs = run_order(spec)[0]
    per_lane = getattr(fam, "SCALE_PER_LANE", False)
    with cgutils.for_range(b, nsb) as loop:
        sb = loop.index
        blk = fam.block(spec, e, P, sb)
        whole = _signed_codes(e, blk)
        while len(whole) > 1:  # one <256 x i8> in kernel order, then one permutation
            whole = e.pairs(whole)
        tile = whole[0] if order == list(range(QK_K)) else e.shuf(whole[0], order)
        units = b.bitcast(tile, V(I32, UNITS))
        for u in range(UNITS):
            e.st(tq, e.mul(e.add(e.mul(sb, UNITS), u), 4 * ROWS), e.lane(units, u))
        scales = _run_scales(e, blk, per_lane)
        corr = ir.Constant(I32, 0)
        for j, base_run in enumerate(runs):
            s = _reduce_add(e, b.sext(e.shuf(tile, range(16 * j, 16 * j + 16)), V(I32, 16)))
            sc = ir.Constant(I32, 1) if scales is None else scales[base_run]
            e.st(ts, e.mul(e.add(e.mul(sb, RUNS), j), 4 * ROWS), sc)
            corr = b.add(corr, s if scales is None else b.mul(s, sc))
        e.st(tc, e.mul(sb, 4 * ROWS), b.shl(corr, ir.Constant(I32, 7)))
        e.st(td, e.mul(sb, 4 * ROWS), blk.d)
        if G:
            mins = b.fmul(e.splat(b.fsub(ir.Constant(F32, 0.0), blk.dmin), G), blk.mins)  # -dmin * min_g
            for g in range(G):
                e.st(tm, e.mul(e.add(e.mul(sb, G), g), 4 * ROWS), e.lane(mins, g))


def _reduce_add(e: E, v):
    f = e.fn(f"llvm.vector.reduce.add.v{v.type.count}i32", I32, [v.type])
    return e.b.call(f, [v])


@intrinsic
def _unpack_row(typingctx, spec, p0, p1, p2, p3, p4, tq, ts, tc, td, tm, lane, nsb):
    """Row (p0..p4, nsb super-blocks) -> row `lane` of a row group's tile (tq int8, ts, tc int32,
    td, tm float32; 1-D)."""
    if not isinstance(spec, SpecType):
        return None
    sp = spec.spec
    sig = types.void(spec, p0, p1, p2, p3, p4, tq, ts, tc, td, tm, lane, nsb)

    def codegen(context, builder, signature, args):
        e = E(builder, sp.portable, sp.vnni, sp.avx512)
        tys = signature.args
        P = [array_addr(context, builder, tys[i], args[i])[0] for i in range(1, 6)]
        out = [array_addr(context, builder, tys[i], args[i])[0] for i in range(6, 11)]
        lane_, nsb_ = (context.cast(builder, args[i], tys[i], types.intp) for i in (11, 12))
        unpack_body(sp, e, P, out, lane_, nsb_)
        return context.get_dummy_value()

    return sig, codegen


# ----------------------------------------------------------------------------- micro-kernel (LLVM IR)
def tile_block_body(spec: Spec, e: E, T_, X_, nsb):
    """One row group (8 rows) x 16 activations over every super-block: the 8 <16 x float> results."""
    b = e.b
    tq, ts, tc, td, tm = T_
    xt, xdt, xst = X_
    G = n_groups(spec)
    slots = cgutils.alloca_once(b, V(F32, COLS), size=ROWS)
    for i in range(ROWS):
        b.store(e.k(V(F32, COLS), 0.0), b.gep(slots, [ir.Constant(I64, i)]))
    isums = cgutils.alloca_once(b, V(I32, COLS), size=ROWS)
    with cgutils.for_range(b, nsb) as loop:
        sb = loop.index
        for i in range(ROWS):
            b.store(e.k(V(I32, COLS), 0), b.gep(isums, [ir.Constant(I64, i)]))
        # a loop over pairs of runs, not unrolled: unrolled, LLVM hoists all 64 activation loads of
        # the super-block ahead of the dot steps and spills them (read from the assembly)
        merge = run_order(spec)[1]
        step = 2 if merge >= 2 else 1  # runs per iteration; one vpmulld per row unless merge == 16
        with cgutils.for_range(b, ir.Constant(I64, RUNS // step)) as runs:
            run = e.add(e.mul(sb, RUNS), e.mul(runs.index, step))
            wq = e.add(tq, e.mul(run, 4 * 4 * ROWS))  # the step's units of the 8 rows
            xq = e.add(xt, e.mul(run, 4 * 64))
            acc = [None] * ROWS
            for k in range(4 * step):
                xv = e.ld(xq, 64 * k, V(I8, 64))
                for i in range(ROWS):
                    w4 = e.ld(wq, 4 * (k * ROWS + i), I32)
                    acc[i] = e.dpbusd(acc[i], xv, b.bitcast(e.splat(w4, 16), V(I8, 64)))
            for i in range(ROWS):
                slot = b.gep(isums, [ir.Constant(I64, i)])
                if merge < RUNS:
                    acc[i] = b.mul(acc[i], e.splat(e.ld(ts, e.mul(e.add(e.mul(run, ROWS), i), 4), I32), 16))
                b.store(b.add(b.load(slot), acc[i]), slot)
        if merge == RUNS:  # one scale for the whole super-block
            for i in range(ROWS):
                slot = b.gep(isums, [ir.Constant(I64, i)])
                sc = e.splat(e.ld(ts, e.mul(e.add(e.mul(e.mul(sb, RUNS), ROWS), i), 4), I32), 16)
                b.store(b.mul(b.load(slot), sc), slot)
        dx = e.ld(xdt, e.mul(sb, 4 * COLS), V(F32, COLS))
        xs = [e.ld(xst, e.mul(e.add(e.mul(sb, G), g), 4 * COLS), V(F32, COLS)) for g in range(G)]
        for i in range(ROWS):
            slot = b.gep(slots, [ir.Constant(I64, i)])
            at = e.mul(e.add(e.mul(sb, ROWS), i), 4)
            c = e.splat(e.ld(tc, at, I32), 16)
            f = e.cvt(b.sub(b.load(b.gep(isums, [ir.Constant(I64, i)])), c))
            dd = b.fmul(e.splat(e.ld(td, at, F32), COLS), dx)
            a = e.fma(f, dd, b.load(slot))
            for g in range(G):
                m = e.ld(tm, e.mul(e.add(e.mul(e.add(e.mul(sb, G), g), ROWS), i), 4), F32)
                a = e.fma(e.splat(m, COLS), xs[g], a)
            b.store(a, slot)
    return [b.load(b.gep(slots, [ir.Constant(I64, i)])) for i in range(ROWS)]


@intrinsic
def _tile_block(typingctx, spec, tq, ts, tc, td, tm, xt, xdt, xst, y, c0, r0, nr):
    """y[c0 + k, r0 + i] = row i of the row group's tile . activation k of the block, for the nr
    valid rows and the activations y has (tile rows 1-D; xt (nsb * 64, 64) u8, xdt (nsb, 16),
    xst (nsb * G, 16))."""
    if not isinstance(spec, SpecType):
        return None
    sp = spec.spec
    sig = types.void(spec, tq, ts, tc, td, tm, xt, xdt, xst, y, c0, r0, nr)

    def codegen(context, builder, signature, args):
        e = E(builder, sp.portable, sp.vnni, sp.avx512)
        b, tys = builder, signature.args
        T_ = [array_addr(context, builder, tys[i], args[i])[0] for i in range(1, 6)]
        X_ = [array_addr(context, builder, tys[i], args[i])[0] for i in (6, 7, 8)]
        c0_, r0_, nr_ = (context.cast(builder, args[i], tys[i], types.intp) for i in (10, 11, 12))
        nsb = cgutils.unpack_tuple(builder, context.make_array(tys[7])(context, builder, args[7]).shape)[0]
        outs = tile_block_body(sp, e, T_, X_, nsb)
        yarr = context.make_array(tys[9])(context, builder, args[9])
        T = cgutils.unpack_tuple(builder, yarr.shape)[0]
        ystr = cgutils.unpack_tuple(builder, yarr.strides)
        ybase = builder.ptrtoint(yarr.data, I64)
        for i in range(ROWS):
            ok_r = b.icmp_signed("<", ir.Constant(I64, i), nr_)
            for k in range(COLS):
                col = e.add(c0_, k)
                with cgutils.if_likely(b, b.and_(ok_r, b.icmp_signed("<", col, T))):
                    e.st(ybase, e.add(e.mul(col, ystr[0]), e.mul(e.add(r0_, i), 4)), e.lane(outs[i], k))
        return context.get_dummy_value()

    return sig, codegen


# ----------------------------------------------------------------------------- driver (njit)
@njit(cache=True)
def _transpose_x(xq, xd, xs, torder, G, xt, xdt, xst):
    """Quantized activations (kernel order) -> the micro-kernel's layout (module doc), per block of
    16: xt (ncb, nsb * 64, 64) bytes x + 128, xdt (ncb, nsb, 16), xst (ncb, nsb * G, 16); the
    activations past T are zero."""
    T = xq.shape[0]
    ncb, nsb = xdt.shape[0], xdt.shape[1]
    flip = np.int8(-128)
    for cb in range(ncb):
        for k in range(16):
            t = cb * 16 + k
            for sb in range(nsb):
                base = sb * 256
                if t < T:
                    xqt = xq[t]
                    for u in range(64):
                        for j in range(4):
                            xt[cb, sb * 64 + u, 4 * k + j] = xqt[base + torder[4 * u + j]] ^ flip
                    xdt[cb, sb, k] = xd[t, sb]
                    for g in range(G):
                        xst[cb, sb * G + g, k] = xs[t, sb * G + g]
                else:
                    for u in range(64):
                        for j in range(4):
                            xt[cb, sb * 64 + u, 4 * k + j] = flip
                    xdt[cb, sb, k] = 0.0
                    for g in range(G):
                        xst[cb, sb * G + g, k] = 0.0


def _tiled_body(spec, p0, p1, p2, p3, p4, x, rows, nq, nd, ns, xblk, sgroup, unit, order, torder, G):
    """(T, rows) = x W^T through row tiles (module doc), parallel over blocks of ROW_BLOCK rows."""
    T = x.shape[0]
    y = np.empty((T, rows), np.float32)
    xq = empty_i8_64(T, nq)
    xd = np.empty((T, nd), np.float32)
    xs = np.empty((T, ns), np.float32)
    quant_x(x, xblk, sgroup, unit, order, xq, xd, xs)
    nsb = nq // 256
    ncb = (T + COLS - 1) // COLS
    xt = empty_i8_64(ncb * nsb * 64, 64).reshape((ncb, nsb * 64, 64))
    xdt = np.empty((ncb, nsb, COLS), np.float32)
    xst = np.empty((ncb, max(1, nsb * G), COLS), np.float32)
    _transpose_x(xq, xd, xs, torder, G, xt, xdt, xst)
    ng = ROW_BLOCK // ROWS
    for blk in prange((rows + ROW_BLOCK - 1) // ROW_BLOCK):
        r0 = blk * ROW_BLOCK
        nrb = min(ROW_BLOCK, rows - r0)
        tq = np.empty((ng, nsb * UNITS * 4 * ROWS), np.int8)  # row group g: unit u of row i at 32u + 4i
        ts = np.empty((ng, nsb * RUNS * ROWS), np.int32)
        tc = np.empty((ng, nsb * ROWS), np.int32)
        td = np.empty((ng, nsb * ROWS), np.float32)
        tm = np.empty((ng, max(1, nsb * G) * ROWS), np.float32)
        for r in range((nrb + ROWS - 1) // ROWS * ROWS):  # a last group's missing rows repeat its last row
            s = r0 + min(r, nrb - 1)
            g, i = r // ROWS, r % ROWS
            _unpack_row(spec, p0[s], p1[s], p2[s], p3[s], p4[s], tq[g], ts[g], tc[g], td[g], tm[g], i, nsb)
        for cb in range(ncb):
            for g in range((nrb + ROWS - 1) // ROWS):
                _tile_block(spec, tq[g], ts[g], tc[g], td[g], tm[g], xt[cb], xdt[cb], xst[cb], y, cb * COLS,
                            r0 + g * ROWS, min(ROWS, nrb - g * ROWS))
    return y


ROW_BLOCK = 64  # rows decoded into one tile (64 x 5632 codes: 352 KB, in L2)
# Fewest activations for which the tiles pay for their decoding: 5632 x 2048 Q4_K / IQ4_XS, one thread,
# against the row kernels: T = 16 0.44x / 0.69x, 32 0.94x / 1.05x, 64 1.18x / 1.43x, 512 1.57x / 1.25x
MIN_T = 64
_tiled_serial, _tiled = serial_and_parallel(_tiled_body, fastmath=True)
TILED = (_tiled_serial, _tiled)  # indexed by threads.SERIAL / PARALLEL


def layout(spec: Spec):
    """(tile order as int64, min groups) for a spec the tiled path runs, else None: the super-block
    families (those with `block`) on hosts with the 512-bit vpdpbusd."""
    if not (USE_VNNI512 and spec.vnni and spec.avx512 and not spec.portable and hasattr(family(spec), "block")):
        return None
    return np.ascontiguousarray(tile_order(spec), np.int64), n_groups(spec)
