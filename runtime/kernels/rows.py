"""The two row intrinsics the drivers call, and the accumulator helpers families share
(float accumulators `Acc`, integer dot-step sums `sum_products` / `add_all`).

    _row(spec, p0..p4, xq, xd, xs, y, r)   y[t, r] = (row r of the weight) . x_t, every t
    _deq_row(spec, p0..p4, out)            out[:] = the row dequantized, kernel order

Arguments: `spec` (its numba type names the layout), the row's five plane rows
(1-D uint8, layouts in planes.py and each family module), the quantized
activations xq (T, colsp) int8, their block scales xd (T, nxd) float32 and
block sums xs (T, nxs) float32 (float weights read x itself as xs), and the
output.  The code emitted comes from the spec's family: `row_body` /
`deq_body` of its kernel module.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .emit import F32, I64, E, V, array_addr
from .spec import SpecType, family

TMAX = 16  # activations one kernel pass handles together (weights decoded once for all of them);
# 16 over 8: 512-token prefill Q6_K 118 -> 155 tok/s, Q8_0 147 -> 156, Q4_0 162 -> 167 (2 threads, Zen 5)


class Acc:
    """Per-activation float accumulators (n_vec <8 x float> each): registers for T == 1,
    a stack array for batched specs."""

    def __init__(self, e: E, spec, n_vec: int, T):
        self.e, self.n = e, n_vec
        zero = e.k(V(F32, 8), 0.0)
        size = TMAX * n_vec if spec.batched else n_vec
        self.slots = cgutils.alloca_once(e.b, V(F32, 8), size=size)
        self.batched = spec.batched
        if not spec.batched:
            for k in range(n_vec):
                e.b.store(zero, self._slot(0, k))
        else:
            over_t(spec, e, T, self.zero)

    def _slot(self, t, k):
        idx = self.e.add(self.e.mul(t, self.n), k) if self.batched else ir.Constant(I64, k)
        return self.e.b.gep(self.slots, [idx])

    def zero(self, t):
        for k in range(self.n):
            self.e.b.store(self.e.k(V(F32, 8), 0.0), self._slot(t, k))

    def get(self, t, k=0):
        return self.e.b.load(self._slot(t, k))

    def put(self, t, v, k=0):
        self.e.b.store(v, self._slot(t, k))


def i16_budget(spec) -> int:
    """How many vpmaddubsw results (i16 pair sums of code * x) one i16 lane can add up without
    overflow: codes up to 128 in size when signed, else 2^bits - 1; activations up to 127."""
    bound = 128 if spec.signed else (1 << spec.bits) - 1
    return max(1, 32767 // (2 * bound * 127))


def sum_products(spec, e: E, prods, scales=None, scale_all=None):
    """<n x i32> from the dot steps' i16 pair sums `prods`: each times its scales (vpmaddwd), or
    added in i16 while no lane can overflow (`i16_budget`) and widened once per partial sum
    (vpmaddwd by `scale_all`, or by ones)."""
    b = e.b
    isum, part, n_part = None, None, 0
    for k, p in enumerate(prods):
        if scales is not None:
            v = e.madd(p, scales[k])
            isum = v if isum is None else b.add(isum, v)
            continue
        part = p if part is None else b.add(part, p)
        n_part += 1
        if n_part == i16_budget(spec) or k == len(prods) - 1:
            v = e.pair_sum16(part) if scale_all is None else e.madd(part, scale_all)
            isum = v if isum is None else b.add(isum, v)
            part, n_part = None, 0
    return isum


def add_all(e: E, vals):
    """The sum of the vectors in `vals` that are not None, added pairwise (a tree)."""
    live = [v for v in vals if v is not None]
    while len(live) > 1:
        live = [e.b.add(live[i], live[i + 1]) if i + 1 < len(live) else live[i] for i in range(0, len(live), 2)]
    return live[0]


def over_t(spec, e: E, T, body):
    """body(t) for t in range(T) (a loop when batched, t = 0 otherwise)."""
    if not spec.batched:
        body(ir.Constant(I64, 0))
        return
    with cgutils.for_range(e.b, T) as loop:
        body(loop.index)


def row_x(e: E, base, stride, t):
    """Address of activation row t of a (T, n) array at base with stride0 `stride` bytes."""
    return e.add(base, e.mul(t, stride))


@intrinsic
def _row(typingctx, spec, p0, p1, p2, p3, p4, xq, xd, xs, y, r):
    """y[t, r] = (row r of the weight) . x_t for every t (see the module docstring)."""
    if not isinstance(spec, SpecType):
        return None
    sp = spec.spec
    sig = types.void(spec, p0, p1, p2, p3, p4, xq, xd, xs, y, r)

    def codegen(context, builder, signature, args):
        e = E(builder, sp.portable, sp.vnni, sp.avx512)
        tys = signature.args
        P = [array_addr(context, builder, tys[i], args[i])[0] for i in range(1, 6)]
        X = []
        for i in (6, 7, 8):
            X.extend(array_addr(context, builder, tys[i], args[i]))
        yarr = context.make_array(tys[9])(context, builder, args[9])
        yshape = cgutils.unpack_tuple(builder, yarr.shape)
        ystr = cgutils.unpack_tuple(builder, yarr.strides)
        ybase = builder.ptrtoint(yarr.data, I64)
        T = yshape[0]
        xshape = cgutils.unpack_tuple(builder, context.make_array(tys[6])(context, builder, args[6]).shape)
        ncols = xshape[1]
        finish = family(sp).row_body(sp, e, P, X, T, ncols)
        rr = context.cast(builder, args[10], tys[10], types.intp)

        def out(t):
            e.st(ybase, e.add(e.mul(t, ystr[0]), e.mul(rr, 4)), finish(t))

        over_t(sp, e, T, out)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _deq_row(typingctx, spec, p0, p1, p2, p3, p4, out):
    """out[:] = row (p0..p4) dequantized, kernel order; out is 1-D float32 of the padded length."""
    if not isinstance(spec, SpecType):
        return None
    sp = spec.spec
    sig = types.void(spec, p0, p1, p2, p3, p4, out)

    def codegen(context, builder, signature, args):
        e = E(builder, sp.portable, sp.vnni, sp.avx512)
        tys = signature.args
        P = [array_addr(context, builder, tys[i], args[i])[0] for i in range(1, 6)]
        oarr = context.make_array(tys[6])(context, builder, args[6])
        ncols = cgutils.unpack_tuple(builder, oarr.shape)[0]
        family(sp).deq_body(sp, e, P, builder.ptrtoint(oarr.data, I64), ncols)
        return context.get_dummy_value()

    return sig, codegen
