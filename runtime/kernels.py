"""Numba CPU kernels for quantized linear layers: decode mat-vec, prefill, dequantize.

    prepare(qtype, data, shape, scales=None, biases=None) -> Packed   # repack once, at load
    linear(p, x)       x (T, cols) float32 -> (T, rows) float32
    dequantize(p)      -> (rows, cols) float32   (bit-exact with gguf / MLX formulas)
    embed_rows(p, ids) -> (len(ids), cols) float32

How the decode path is fast
---------------------------
* Weights are repacked once into contiguous code planes (`repack.py`): a
  32-byte load yields the codes of 32 weights after one shift/mask.
* Activations are quantized to int8 per block (256 for k-quants like ggml's
  Q8_K, the scale group for Q8_0/affine), with float block sums kept for the
  min/bias terms.  A weight group then costs integer work only:
      vpmaddubsw (u8 codes x s8 activations -> s16 pairs)
      vpmaddwd   (x the group's integer scale -> s32)
  and one float fma per super-block (k-quants) or per unit (affine).
* numba's auto-vectorizer does not find vpmaddubsw, and its scalar typing
  widens integers to int64, so the row kernels are numba *intrinsics* that emit
  LLVM vector IR directly (`_E` below): plain `<32 x i8>` loads, shifts and
  masks, plus the two x86 AVX2 dot-product instructions when the compile target
  has AVX2 (`llvm.x86.avx2.pmadd.ub.sw` / `pmadd.wd`).  Elsewhere (ARM, old
  x86) the same two steps are written as portable widening multiplies and
  pairwise adds, which LLVM lowers for the target; both variants are tested.
* The prange over rows, the activation quantizer and the dispatch are ordinary
  `@njit(cache=True, parallel=True)` functions; compiled code is cached on
  disk, so a second start does not recompile.

Accuracy: int8 activations give a relative error of about 0.5% of the row's
dot-product scale (|error| <~ sum_i |w_i x_i| / 254 per block, averaging down);
(llama.cpp quantizes activations the same way, to Q8_K / Q8_0).  Prefill with
T up to SMALL_T_QUANT uses the same kernels (4-8 activations per pass share each
decoded weight block); beyond it, dequantized row tiles and BLAS.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field

import numpy as np
from llvmlite import ir
from numba import config as _nb_config
from numba import njit, prange, typeof, types
from numba.core import cgutils
from numba.core.typing.typeof import Purpose
from numba.extending import NativeValue, intrinsic, models, register_model, typeof_impl, unbox

from ..errors import UnsupportedError
from ..tables import AFFINE_BITS, AFFINE_GROUPS, QK_K, affine_name, quant_info
from . import repack

__all__ = ["Packed", "prepare", "concat_rows", "linear", "dequantize", "embed_rows"]

TMAX = 8  # activations one kernel pass handles together (weights decoded once for all of them)
# Largest T that still uses the packed kernels; above it: dequantized row tiles + BLAS.
# Measured on the 94M bench model (2-core Zen, 2 threads, 128-token prompt): the int8
# kernels 283 tok/s, BLAS on 256-row tiles 283, on 16 MB tiles 514 (Q4_K); Q8_0 246 -> 507.
# Large tiles matter: OpenBLAS splits one big product across threads far better.
SMALL_T_QUANT = 64
SMALL_T_8BIT = 32  # Q8_0 / AFFINE8: one float fma per 32 weights per activation, so BLAS wins sooner
SMALL_T_FLOAT = 8
TILE_ELEMS = 1 << 22  # float32 weights per dequantized tile on the prefill path (16 MB)
TILE_MIN_ROWS = 64


def _host_has_avx2() -> bool:
    """True when numba compiles for a CPU with AVX2 (then the x86 dot intrinsics are used)."""
    if os.environ.get("EDGESLIM_PORTABLE_KERNELS"):
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if _nb_config.CPU_NAME or _nb_config.CPU_FEATURES:  # user pinned a generic/other target
        return "+avx2" in (_nb_config.CPU_FEATURES or "")
    import llvmlite.binding as llvm

    return bool(llvm.get_host_cpu_features().get("avx2", False))


USE_AVX2 = _host_has_avx2()


# =============================================================================
# Kernel specs: the compile-time description of one weight layout.  A Spec is
# passed into the njit wrappers as an argument whose numba *type* carries the
# spec name, so each layout gets its own specialization (and cache entry)
# while one wrapper serves all of them.
# =============================================================================
@dataclass(frozen=True)
class Spec:
    """Geometry of one kernel layout.

    family: "kq" (k-quant super-blocks), "aff" (affine / Q8_0 units), "flt" (F16/BF16/F32)
    unit:   elements one kernel step covers (256 for k-quants; 32*S for affine)
    group:  elements per scale (k-quants 16/32, affine 32/64)
    """

    name: str
    family: str
    bits: int
    unit: int
    group: int
    xblk: int  # activation int8 block
    sgroup: int  # activation float-sum group (min/bias terms)
    signed: bool = False  # codes are signed int8 (Q8_0)
    portable: bool = False  # emit the portable dot steps instead of x86 intrinsics
    batched: bool = False  # loop over up to TMAX activations

    @property
    def stride(self) -> int:
        """Interleave stride S of the affine kernel order (1: stored order)."""
        return self.unit // 32 if self.family == "aff" else 1

    @property
    def key(self) -> str:
        return f"{self.name}{'/p' if self.portable else ''}{'/b' if self.batched else ''}"


def _make_specs() -> dict[str, Spec]:
    out = {}
    for name, g in repack.KQUANT_GROUP.items():
        out[name] = Spec(name, "kq", quant_info(name).bits, QK_K, g, QK_K, g)
    q8 = quant_info("Q8_0").block  # one f16 scale per 32 signed codes: an affine unit without bias
    out["Q8_0"] = Spec("Q8_0", "aff", 8, q8, q8, q8, q8, signed=True)
    for bits in AFFINE_BITS:
        for g in AFFINE_GROUPS:
            n = affine_name(bits, g)
            out[n] = Spec(n, "aff", bits, repack.AFFINE_UNIT[bits], g, g, g)
    for n, bits in (("F16", 16), ("BF16", 16), ("F32", 32)):
        out[n] = Spec(n, "flt", bits, 32, 32, 32, 32)
    return out


_BASE_SPECS = _make_specs()
_SPECS: dict[str, Spec] = {}
for _s in _BASE_SPECS.values():
    for _p in (False, True):
        for _b in (False, True):
            _v = Spec(**{**_s.__dict__, "portable": _p, "batched": _b})
            _SPECS[_v.key] = _v


class SpecType(types.Dummy):
    """numba type of a Spec value: one type (and compiled specialization) per layout."""

    def __init__(self, spec_key: str):
        self.spec_key = spec_key
        # the name is the cache/specialization key: it also records which dot steps get emitted
        super().__init__(name=f"KernelSpec({spec_key}{'' if USE_AVX2 else '/generic'})")

    @property
    def spec(self) -> Spec:
        return _SPECS[self.spec_key]


_SPEC_TYPES: dict[str, SpecType] = {}


@typeof_impl.register(Spec)
def _typeof_spec(val, c):
    t = _SPEC_TYPES.get(val.key)
    if t is None:
        t = _SPEC_TYPES[val.key] = SpecType(val.key)
    return t


register_model(SpecType)(models.OpaqueModel)


@unbox(SpecType)
def _unbox_spec(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())


# =============================================================================
# LLVM vector IR emitter
# =============================================================================
I8, I16, I32, I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
F16, F32 = ir.HalfType(), ir.FloatType()


def V(t, n):
    return ir.VectorType(t, n)


class _E:
    """A few vector helpers over an llvmlite IRBuilder (addresses are i64 integers)."""

    def __init__(self, b: ir.IRBuilder, portable: bool):
        self.b, self.portable = b, portable or not USE_AVX2

    # -- constants, addresses, memory
    def k(self, ty, v):
        if isinstance(ty, ir.VectorType):
            return ir.Constant(ty, [v] * ty.count)
        return ir.Constant(ty, v)

    def i(self, v):
        return v if isinstance(v, ir.Value) else ir.Constant(I64, int(v))

    def add(self, *vals):
        acc = self.i(vals[0])
        for v in vals[1:]:
            acc = self.b.add(acc, self.i(v))
        return acc

    def mul(self, a, b):
        return self.b.mul(self.i(a), self.i(b))

    def ptr(self, base, off, ty):
        return self.b.inttoptr(self.add(base, off), ty.as_pointer())

    def ld(self, base, off, ty):
        return self.b.load(self.ptr(base, off, ty), align=1)

    def st(self, base, off, val):
        self.b.store(val, self.ptr(base, off, val.type), align=1)

    def shuf(self, v, mask):
        return self.b.shuffle_vector(v, ir.Constant(v.type, ir.Undefined), ir.Constant(V(I32, len(mask)), list(mask)))

    def splat(self, s, n=8):
        t = V(s.type, n)
        u = self.b.insert_element(ir.Constant(t, ir.Undefined), s, ir.Constant(I32, 0))
        return self.shuf(u, [0] * n)

    def lane(self, v, i):
        return self.b.extract_element(v, ir.Constant(I32, i))

    def fn(self, name, ret, args):
        return cgutils.get_or_insert_function(self.b.module, ir.FunctionType(ret, args), name)

    # -- code extraction from planes (u8 lanes); see repack.py for the layouts
    def bits_at(self, q, shift, width, pos):
        """Field q[shift:shift+width] of each byte, moved to bit `pos` (2 ops)."""
        mask = self.k(q.type, ((1 << width) - 1) << pos)
        if shift > pos:
            q = self.b.lshr(q, self.k(q.type, shift - pos))
        elif shift < pos:
            q = self.b.shl(q, self.k(q.type, pos - shift))
        return self.b.and_(q, mask)

    def nib(self, base, off, hi):
        q = self.ld(base, off, V(I8, 32))
        return self.b.lshr(q, self.k(q.type, 4)) if hi else self.b.and_(q, self.k(q.type, 15))

    def crumb(self, base, off, s, pos=0):
        return self.bits_at(self.ld(base, off, V(I8, 32)), 2 * s, 2, pos)

    def bit(self, base, off, k, pos):
        return self.bits_at(self.ld(base, off, V(I8, 32)), k, 1, pos)

    # -- integer dot steps
    def maddubs(self, u8, s8):
        """<32 x u8> * <32 x s8> -> <16 x i16> pair sums (never saturates for our ranges)."""
        if not self.portable:
            f = self.fn("llvm.x86.avx2.pmadd.ub.sw", V(I16, 16), [V(I8, 32), V(I8, 32)])
            return self.b.call(f, [u8, s8])
        p = self.b.mul(self.b.zext(u8, V(I16, 32)), self.b.sext(s8, V(I16, 32)))
        return self.b.add(self.shuf(p, range(0, 32, 2)), self.shuf(p, range(1, 32, 2)))

    def madd(self, a16, b16):
        """<16 x i16> * <16 x i16> -> <8 x i32> pair sums."""
        if not self.portable:
            f = self.fn("llvm.x86.avx2.pmadd.wd", V(I32, 8), [V(I16, 16), V(I16, 16)])
            return self.b.call(f, [a16, b16])
        p = self.b.mul(self.b.sext(a16, V(I32, 16)), self.b.sext(b16, V(I32, 16)))
        return self.b.add(self.shuf(p, range(0, 16, 2)), self.shuf(p, range(1, 16, 2)))

    def pair_sum16(self, a16):
        """<16 x i16> -> <8 x i32> sums of adjacent pairs (vpmaddwd by ones on AVX2)."""
        if not self.portable:
            return self.madd(a16, self.k(V(I16, 16), 1))
        w = self.b.sext(a16, V(I32, 16))
        return self.b.add(self.shuf(w, range(0, 16, 2)), self.shuf(w, range(1, 16, 2)))

    def lane_bcast16(self, v, c):
        """<16 x i16> -> element c of each 128-bit half broadcast across that half
        (an in-lane pattern: one vpshufb, or a vpbroadcastw when both halves agree)."""
        return self.shuf(v, [c] * 8 + [8 + c] * 8)

    def sign_dot(self, w8, x8):
        """Signed <32 x i8> . <32 x i8> -> <16 x i16>, via |w| * (x with w's sign)."""
        neg = self.b.icmp_signed("<", w8, self.k(w8.type, 0))
        aw = self.b.select(neg, self.b.sub(self.k(w8.type, 0), w8), w8)
        if self.portable:
            sx = self.b.select(neg, self.b.sub(self.k(x8.type, 0), x8), x8)
        else:  # vpsignb: x * sign(w) in one instruction
            sx = self.b.call(self.fn("llvm.x86.avx2.psign.b", V(I8, 32), [V(I8, 32), V(I8, 32)]), [x8, w8])
        return self.maddubs(aw, sx)

    # -- float
    def fma(self, a, b, c):
        t = a.type
        f = self.fn(f"llvm.fmuladd.v{t.count}f32", t, [t, t, t])
        return self.b.call(f, [a, b, c])

    def cvt(self, v):
        return self.b.sitofp(v, V(F32, v.type.count))

    def hsum(self, v):
        """<8 x float> -> float."""
        s = self.b.fadd(self.shuf(v, [0, 1, 2, 3]), self.shuf(v, [4, 5, 6, 7]))
        s = self.b.fadd(s, self.shuf(s, [2, 3, 2, 3]))
        s = self.b.fadd(s, self.shuf(s, [1, 1, 1, 1]))
        return self.lane(s, 0)

    def halves(self, base, off, n):
        """n float16 values at base+off -> <n x float>."""
        return self.b.fpext(self.ld(base, off, V(F16, n)), V(F32, n))

    def bf16s(self, base, off, n):
        v = self.b.zext(self.ld(base, off, V(I16, n)), V(I32, n))
        return self.b.bitcast(self.b.shl(v, self.k(V(I32, n), 16)), V(F32, n))


def _data(context, builder, ty, val):
    """(data address as i64, stride0 in bytes or None) of a numba array value."""
    a = context.make_array(ty)(context, builder, val)
    strides = cgutils.unpack_tuple(builder, a.strides)
    return builder.ptrtoint(a.data, I64), (strides[0] if ty.ndim > 1 else None)


# =============================================================================
# Per-layout decoding.  "codes" are <32 x i8> (unsigned unless spec.signed).
# =============================================================================
def _kq_block(spec: Spec, e: _E, P, sb):
    """One k-quant super-block: 8 chunk codes, 8 <16 x i16> chunk scales, float mins.

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
    if name in ("Q2_K", "Q3_K", "Q6_K"):
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
    raise AssertionError(name)


def _aff_codes(spec: Spec, e: _E, P, u):
    """Unit u of an affine/Q8_0 row: S chunk codes (kernel order, see repack.py)."""
    b, bits, p0, p1 = e.b, spec.bits, P[0], P[1]
    S = spec.stride
    if bits == 8:
        q = e.ld(p0, e.mul(u, 32), V(I8, 32))
        return [q if spec.signed else b.xor(q, e.k(q.type, 0x80))]  # u8 -> u8 - 128 (bias absorbs +128 s)
    if bits == 2:
        return [e.crumb(p0, e.mul(u, 32), c) for c in range(S)]
    if bits == 4:
        return [e.nib(p0, e.mul(u, 32), c) for c in range(S)]
    if bits == 3:
        return [b.or_(e.crumb(p0, e.add(e.mul(u, 64), 32 * (c // 4)), c % 4), e.bit(p1, e.mul(u, 32), c, 2))
                for c in range(S)]
    if bits == 5:
        return [b.or_(e.nib(p0, e.add(e.mul(u, 128), 32 * (c // 2)), c % 2), e.bit(p1, e.mul(u, 32), c, 4))
                for c in range(S)]
    if bits == 6:
        return [b.or_(e.nib(p0, e.add(e.mul(u, 64), 32 * (c // 2)), c % 2), e.crumb(p1, e.mul(u, 32), c, pos=4))
                for c in range(S)]
    raise AssertionError(bits)


def _aff_lane_groups(spec: Spec) -> list[int]:
    """For each i32 lane l of a unit's dot vector: which of the unit's groups it belongs to.

    Lane l sums chunk lanes 4l..4l+3, i.e. elements (4l..4l+3)*S + c of the unit.
    """
    return [(4 * l * spec.stride) // spec.group for l in range(8)] if spec.unit >= spec.group else [0] * 8


def _aff_unit_groups(spec: Spec, e: _E, u):
    """(first group index of unit u, number of groups the unit spans)."""
    if spec.unit >= spec.group:
        return e.mul(u, spec.unit // spec.group), spec.unit // spec.group
    return e.b.udiv(e.i(u), e.i(spec.group // spec.unit)), 1


def _coef(spec: Spec, e: _E, base, g0, ng, xdb):
    """<8 x float> of scale * activation-scale per dot lane, for groups g0 .. g0+ng-1."""
    if ng == 1:
        s = e.b.fpext(e.ld(base, e.mul(g0, 2), F16), F32)
        return e.splat(e.b.fmul(s, e.ld(xdb, e.mul(g0, 4), F32)))
    s = e.b.fmul(e.halves(base, e.mul(g0, 2), ng), e.ld(xdb, e.mul(g0, 4), V(F32, ng)))
    return e.shuf(s, _aff_lane_groups(spec))


def _i16_budget(spec: Spec) -> int:
    """How many chunk pair-sums (<16 x i16>) may be added before widening, without overflow."""
    per = 2 * 128 * 127 if spec.bits == 8 else 2 * ((1 << spec.bits) - 1) * 127
    return max(1, 32767 // per)


# =============================================================================
# Row kernels (intrinsics).  Arguments: spec, five plane rows (1-D uint8),
# xq (T, colsp) int8, xd (T, nxd) f32, xs (T, nxs) f32, y (T, rows) f32, r.
# =============================================================================
class _Acc:
    """Per-activation float accumulators: registers for T == 1, a stack array for batched."""

    def __init__(self, e: _E, spec: Spec, n_vec: int):
        self.e, self.n = e, n_vec
        zero = e.k(V(F32, 8), 0.0)
        size = TMAX * n_vec if spec.batched else n_vec
        self.slots = cgutils.alloca_once(e.b, V(F32, 8), size=size)
        self.batched = spec.batched
        if not spec.batched:
            for k in range(n_vec):
                e.b.store(zero, self._slot(0, k))

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


def _over_t(spec: Spec, e: _E, T, body):
    """body(t) for t in range(T) (a loop when batched, t = 0 otherwise)."""
    if not spec.batched:
        body(ir.Constant(I64, 0))
        return
    with cgutils.for_range(e.b, T) as loop:
        body(loop.index)


def _row_body(spec: Spec, e: _E, P, X, T, ncols):
    """Emit the row's accumulation; returns acc and a finisher giving float y_t."""
    b = e.b
    xq, xqs, xd, xds, xs, xss = X
    row_x = lambda base, st, t: e.add(base, e.mul(t, st))  # noqa: E731
    n_vec = {"flt": 4, "aff": 2}.get(spec.family, 1)
    acc = _Acc(e, spec, n_vec)
    if spec.batched:
        _over_t(spec, e, T, acc.zero)

    if spec.family == "kq":
        G = QK_K // spec.group

        with cgutils.for_range(b, e.b.udiv(ncols, e.i(QK_K))) as loop:
            sb = loop.index
            codes, scales, mins, d, dmin = _kq_block(spec, e, P, sb)

            def step(t):
                xqt, xdt, xst = row_x(xq, xqs, t), row_x(xd, xds, t), row_x(xs, xss, t)
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

            _over_t(spec, e, T, step)

        def finish(t):
            return e.hsum(acc.get(t))

        return finish

    if spec.family == "aff":
        budget = _i16_budget(spec)
        U, S, Gs = spec.unit, spec.stride, spec.group

        def unit_isum(u, codes, xqt):
            """<8 x i32>: lane l = sum over the unit's chunk lanes 4l..4l+3 of code * x."""
            isum, part, n_part = None, None, 0
            for c, q in enumerate(codes):
                x8 = e.ld(xqt, e.add(e.mul(u, U), 32 * c), V(I8, 32))
                p = e.sign_dot(q, x8) if spec.bits == 8 else e.maddubs(q, x8)
                part = p if part is None else b.add(part, p)
                n_part += 1
                if n_part == budget or c == len(codes) - 1:
                    w = e.pair_sum16(part)
                    isum = w if isum is None else b.add(isum, w)
                    part, n_part = None, 0
            return isum

        # Main loop: blocks of NU units spanning exactly 8 groups, so the 8
        # (scale * activation scale) coefficients are one vector per block and
        # each unit picks its lanes with one shuffle.
        NU = 8 * Gs // U
        nunits = b.udiv(ncols, e.i(U))
        nblk = b.udiv(nunits, e.i(NU))
        with cgutils.for_range(b, nblk) as loop:
            blk = loop.index
            s8 = e.halves(P[2], e.mul(blk, 16), 8)
            units = [e.add(e.mul(blk, NU), k) for k in range(NU)]
            codes = [_aff_codes(spec, e, P, u) for u in units]  # decoded once for all activations

            def step(t):
                coef8 = b.fmul(s8, e.ld(row_x(xd, xds, t), e.mul(blk, 32), V(F32, 8)))
                xqt = row_x(xq, xqs, t)
                a = [acc.get(t, 0), acc.get(t, 1)]
                for k in range(NU):
                    lanes = [(k * U + 4 * l * S) // Gs for l in range(8)]
                    isum = unit_isum(units[k], codes[k], xqt)
                    a[k % 2] = e.fma(e.shuf(coef8, lanes), e.cvt(isum), a[k % 2])
                acc.put(t, a[0], 0)
                acc.put(t, a[1], 1)

            _over_t(spec, e, T, step)
        # tail: units of the row's last (< 8) groups, one coefficient lookup per unit
        with cgutils.for_range(b, b.sub(nunits, e.mul(nblk, NU))) as loop:
            u = e.add(e.mul(nblk, NU), loop.index)
            codes = _aff_codes(spec, e, P, u)
            g0, ng = _aff_unit_groups(spec, e, u)

            def tstep(t, u=u, codes=codes, g0=g0, ng=ng):
                isum = unit_isum(u, codes, row_x(xq, xqs, t))
                coef = _coef(spec, e, P[2], g0, ng, row_x(xd, xds, t))
                acc.put(t, e.fma(coef, e.cvt(isum), acc.get(t)))

            _over_t(spec, e, T, tstep)

        def finish(t):
            y = e.hsum(b.fadd(acc.get(t, 0), acc.get(t, 1)))
            if spec.signed:  # Q8_0: no bias
                return y
            # bias term: sum_g b_g * xsum_g  (AFFINE8 codes were shifted by -128: b' = b + 128 s)
            xst = row_x(xs, xss, t)
            bacc = cgutils.alloca_once_value(b, e.k(V(F32, 8), 0.0))
            ngp = b.udiv(e.add(b.udiv(ncols, e.i(spec.group)), repack.PAD_GROUPS - 1), e.i(repack.PAD_GROUPS))
            with cgutils.for_range(b, ngp) as gl:
                g8 = e.mul(gl.index, 8)
                bias = e.halves(P[3], e.mul(g8, 2), 8)
                if spec.bits == 8:
                    bias = e.fma(e.halves(P[2], e.mul(g8, 2), 8), e.k(V(F32, 8), 128.0), bias)
                b.store(e.fma(bias, e.ld(xst, e.mul(g8, 4), V(F32, 8)), b.load(bacc)), bacc)
            return b.fadd(y, e.hsum(b.load(bacc)))

        return finish

    # float weights: 32 elements per step, 4 independent accumulators
    with cgutils.for_range(b, e.b.udiv(ncols, e.i(32))) as loop:
        j = loop.index
        if spec.name == "F16":
            w = [e.halves(P[0], e.add(e.mul(j, 64), 16 * k), 8) for k in range(4)]
        elif spec.name == "BF16":
            w = [e.bf16s(P[0], e.add(e.mul(j, 64), 16 * k), 8) for k in range(4)]
        else:
            w = [e.ld(P[0], e.add(e.mul(j, 128), 32 * k), V(F32, 8)) for k in range(4)]

        def fstep(t):
            xt = row_x(xs, xss, t)
            for k in range(4):
                xv = e.ld(xt, e.add(e.mul(j, 128), 32 * k), V(F32, 8))
                acc.put(t, e.fma(w[k], xv, acc.get(t, k)), k)

        _over_t(spec, e, T, fstep)

    def ffinish(t):
        s = b.fadd(b.fadd(acc.get(t, 0), acc.get(t, 1)), b.fadd(acc.get(t, 2), acc.get(t, 3)))
        return e.hsum(s)

    return ffinish


@intrinsic
def _row(typingctx, spec, p0, p1, p2, p3, p4, xq, xd, xs, y, r):
    """y[t, r] = (row r of the weight) . x_t for every t; see _row_body."""
    if not isinstance(spec, SpecType):
        return None
    sp = spec.spec
    sig = types.void(spec, p0, p1, p2, p3, p4, xq, xd, xs, y, r)

    def codegen(context, builder, signature, args):
        e = _E(builder, sp.portable)
        tys = signature.args
        P = [_data(context, builder, tys[i], args[i])[0] for i in range(1, 6)]
        X = []
        for i in (6, 7, 8):
            X.extend(_data(context, builder, tys[i], args[i]))
        yarr = context.make_array(tys[9])(context, builder, args[9])
        yshape = cgutils.unpack_tuple(builder, yarr.shape)
        ystr = cgutils.unpack_tuple(builder, yarr.strides)
        ybase = builder.ptrtoint(yarr.data, I64)
        T = yshape[0]
        xshape = cgutils.unpack_tuple(builder, context.make_array(tys[6])(context, builder, args[6]).shape)
        ncols = xshape[1]
        finish = _row_body(sp, e, P, X, T, ncols)
        rr = context.cast(builder, args[10], tys[10], types.intp)

        def out(t):
            e.st(ybase, e.add(e.mul(t, ystr[0]), e.mul(rr, 4)), finish(t))

        _over_t(sp, e, T, out)
        return context.get_dummy_value()

    return sig, codegen


# =============================================================================
# Row dequantization (exact: same float operations, same order, as gguf-py's
# numpy dequantizers and MLX's  s * q + b).  Writes kernel order.
# =============================================================================
def _deq_body(spec: Spec, e: _E, P, out, ncols):
    b = e.b

    def store32(off_elems, vals):  # vals: <32 x float>
        e.st(out, e.mul(off_elems, 4), vals)

    def f32(codes_i32):
        return b.sitofp(codes_i32, V(F32, 32))

    if spec.family == "kq":
        G = QK_K // spec.group
        with cgutils.for_range(b, b.udiv(ncols, e.i(QK_K))) as loop:
            sb = loop.index
            codes, _, _, d, dmin = _kq_block(spec, e, P, sb)
            raw = e.ld(P[2], e.mul(sb, G), V(I8, G))
            name = spec.name
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
                w = b.fmul(e.shuf(dl, gmask), f32(q))
                if ml is not None:
                    w = b.fsub(w, e.shuf(ml, gmask))
                store32(e.add(e.mul(sb, QK_K), 32 * c), w)
        return

    if spec.family == "aff":
        lane_g = [(j * spec.stride) // spec.group for j in range(32)] if spec.unit >= spec.group else [0] * 32
        with cgutils.for_range(b, b.udiv(ncols, e.i(spec.unit))) as loop:
            u = loop.index
            codes = _aff_codes(spec, e, P, u)
            g0, ng = _aff_unit_groups(spec, e, u)
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
                w = b.fmul(f32(qi), s)
                if bb is not None:
                    w = b.fadd(w, bb)
                store32(e.add(e.mul(u, spec.unit), 32 * c), w)
        return

    with cgutils.for_range(b, b.udiv(ncols, e.i(32))) as loop:
        j = loop.index
        if spec.name == "F16":
            w = e.halves(P[0], e.mul(j, 64), 32)
        elif spec.name == "BF16":
            w = e.bf16s(P[0], e.mul(j, 64), 32)
        else:
            w = e.ld(P[0], e.mul(j, 128), V(F32, 32))
        store32(e.mul(j, 32), w)


@intrinsic
def _deq_row(typingctx, spec, p0, p1, p2, p3, p4, out):
    """out[:] = row (p0..p4) dequantized, kernel order; out is 1-D float32 of the padded length."""
    if not isinstance(spec, SpecType):
        return None
    sp = spec.spec
    sig = types.void(spec, p0, p1, p2, p3, p4, out)

    def codegen(context, builder, signature, args):
        e = _E(builder, sp.portable)
        tys = signature.args
        P = [_data(context, builder, tys[i], args[i])[0] for i in range(1, 6)]
        oarr = context.make_array(tys[6])(context, builder, args[6])
        ncols = cgutils.unpack_tuple(builder, oarr.shape)[0]
        _deq_body(sp, e, P, builder.ptrtoint(oarr.data, I64), ncols)
        return context.get_dummy_value()

    return sig, codegen


# =============================================================================
# njit drivers
# =============================================================================
@njit(cache=True, fastmath=True)
def _quant_x(x, xblk, sgroup, stride, unit, xq, xd, xs):
    """x (T, colsp) float32 -> int8 codes per block of xblk (max-abs / 127 scale),
    block scales xd (T, >= colsp/xblk), float sums xs (T, >= colsp/sgroup) of x per
    sgroup (entries past the data zeroed), codes interleaved per unit (chunk c,
    lane j <- element j*stride + c).  Rounds half away from zero."""
    T, n = x.shape
    tmp = np.empty(n if stride > 1 else 0, np.int8)
    bits = x.view(np.int32)  # max |x| as an integer max over the bit patterns: vectorizes (a float max does not)
    cell = np.empty(1, np.int32)
    cellf = cell.view(np.float32)
    for t in range(T):
        xt = x[t]
        bt = bits[t]
        dst = tmp if stride > 1 else xq[t]
        for blk in range(n // xblk):
            i0 = blk * xblk
            m = np.int32(0)
            for i in range(xblk):
                a = bt[i0 + i] & np.int32(0x7FFFFFFF)
                m = a if a > m else m
            cell[0] = m
            amax = cellf[0]
            inv = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
            xd[t, blk] = amax / np.float32(127.0)
            for i in range(xblk):
                v = xt[i0 + i] * inv
                q = np.int32(abs(v) + np.float32(0.5))
                dst[i0 + i] = np.int8(q if v >= 0 else -q)
        for blk in range(n // xblk, xd.shape[1]):
            xd[t, blk] = 0.0
        # sums of the *quantized* activations (like ggml's Q8_K bsums): the offset term
        # (mins, biases, Q6_K's -32) then cancels the rounding error of the code term
        # instead of adding it back through exact float sums.
        for g in range(n // sgroup):
            s = np.float32(0.0)
            for i in range(sgroup):
                j = g * sgroup + i
                s += np.float32(dst[j]) * xd[t, j // xblk]
            xs[t, g] = s
        for g in range(n // sgroup, xs.shape[1]):
            xs[t, g] = 0.0
        if stride > 1:
            xqt = xq[t]
            for u0 in range(0, n, unit):
                for c in range(stride):
                    for j in range(32):
                        xqt[u0 + c * 32 + j] = tmp[u0 + j * stride + c]


@njit(cache=True, parallel=True, fastmath=True)
def _matvec(spec, p0, p1, p2, p3, p4, x, rows, nq, nd, ns, xblk, sgroup, stride, unit):
    """(T, rows) = x W^T.  Quantizes x into (xq, xd, xs) when xblk > 0 (float
    weights, xblk == 0, read x itself as xs), then TMAX activations per pass,
    parallel over rows.  np.empty only: a numba np.zeros would be its own parfor."""
    T = x.shape[0]
    y = np.empty((T, rows), np.float32)
    xq = np.empty((T, nq), np.int8)
    xd = np.empty((T, nd), np.float32)
    xs = x
    if xblk > 0:
        xs = np.empty((T, ns), np.float32)
        _quant_x(x, xblk, sgroup, stride, unit, xq, xd, xs)
    for t0 in range(0, T, TMAX):
        t1 = min(T, t0 + TMAX)
        xq_, xd_, xs_, y_ = xq[t0:t1], xd[t0:t1], xs[t0:t1], y[t0:t1]
        for r in prange(rows):
            _row(spec, p0[r], p1[r], p2[r], p3[r], p4[r], xq_, xd_, xs_, y_, r)
    return y


@njit(cache=True, parallel=True)
def _dequant_rows(spec, p0, p1, p2, p3, p4, ids, out):
    """out[i] = row ids[i], dequantized in kernel order."""
    for i in prange(ids.shape[0]):
        r = ids[i]
        _deq_row(spec, p0[r], p1[r], p2[r], p3[r], p4[r], out[i])


# =============================================================================
# Public API
# =============================================================================
def _spec_variant(spec: Spec, **kw) -> Spec:
    return _SPECS[Spec(**{**spec.__dict__, **kw}).key]


@dataclass(eq=False)
class Packed:
    """A weight matrix repacked for the kernels.

    shape: (rows, cols) of the float matrix; colsp: padded row length the kernels see.
    planes: five (rows, n) uint8 arrays (layouts in repack.py).
    perm: kernel order -> element index (colsp,), or None when the order is the stored one.
    """

    qtype: str
    shape: tuple[int, int]
    spec: Spec
    planes: tuple[np.ndarray, ...]
    colsp: int
    perm: np.ndarray | None = None
    _inv: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        self._entries = {}
        self._single = _spec_variant(self.spec, batched=False)
        self._batched = _spec_variant(self.spec, batched=True)
        sp = self.spec
        if sp.family == "flt":
            self._x_widths = (self.colsp, 0, self.colsp)  # xq only gives the kernel its row length
        else:  # xd: one scale per xblk; xs: one float sum per sgroup (affine: padded group count)
            nxs = self.planes[2].shape[1] // 2 if sp.family == "aff" and not sp.signed else self.colsp // sp.sgroup
            self._x_widths = (self.colsp, max(self.colsp // sp.xblk, nxs), nxs)

    @property
    def nbytes(self) -> int:
        return int(sum(p.nbytes for p in self.planes))

    def with_portable(self, portable: bool = True) -> "Packed":
        """The same weights run through the portable (non-x86-intrinsic) kernel variant."""
        sp = _spec_variant(self.spec, portable=portable)
        return Packed(self.qtype, self.shape, sp, self.planes, self.colsp, self.perm, self._inv)


def _canonical(qtype: str) -> str:
    try:
        return quant_info(qtype).name
    except ValueError as e:
        raise UnsupportedError(str(e)) from None


def prepare(qtype: str, data, shape, scales=None, biases=None) -> Packed:
    """Repack one stored weight for the kernels (done once at load).

    qtype: "Q4_K", "Q8_0", "F16", "AFFINE4_G64", ... (edgeslim.tables names).
    data: the stored bytes (numpy array / buffer); for affine: the packed uint32 codes.
    shape: (rows, cols) of the float matrix.  scales/biases: affine float16 (rows, cols/group).
    """
    name = _canonical(qtype)
    rows, cols = (int(v) for v in shape)
    if name not in _BASE_SPECS:
        raise UnsupportedError(f"no CPU kernel for weight type {name}; re-convert the model with a supported type")
    spec = _BASE_SPECS[name]
    perm = None
    if spec.family == "kq" or name == "Q8_0":
        planes, colsp = repack.repack_ggml(name, data, rows, cols), cols
    elif spec.family == "flt":
        colsp = -(-cols // 32) * 32
        planes = repack.repack_float(name, data, rows, cols, colsp)
    else:
        planes, colsp = repack.repack_affine(name, data, scales, biases, rows, cols)
        if spec.stride > 1:
            idx = np.arange(colsp).reshape(colsp // spec.unit, 32, spec.stride)
            perm = idx.transpose(0, 2, 1).reshape(colsp)  # kernel position -> element
    inv = None if perm is None else np.argsort(perm)
    return Packed(name, (rows, cols), spec, planes, colsp, perm, inv)


def concat_rows(packs: list[Packed]) -> Packed | None:
    """One Packed holding the rows of `packs` stacked (a fused projection such as
    q|k|v), or None when they differ in type or row length.  One call then
    quantizes the activations once and runs one parallel region for all of them."""
    first = packs[0]
    if any(p.qtype != first.qtype or p.colsp != first.colsp or p.shape[1] != first.shape[1]
           or (p.perm is None) != (first.perm is None) for p in packs):
        return None
    planes = tuple(np.concatenate([p.planes[i] for p in packs], axis=0) for i in range(len(first.planes)))
    rows = sum(p.shape[0] for p in packs)
    return Packed(first.qtype, (rows, first.shape[1]), first.spec, planes, first.colsp, first.perm, first._inv)


def _fast_call(p: Packed, key, disp, *args):
    """disp(*args), through the compiled entry point once known (skips numba's
    per-call argument typing, ~3 us, mostly for the Spec argument).  Arguments
    for one (p, key) must keep their types; callers pass fresh C-contiguous,
    aligned, writeable arrays and Python ints."""
    ent = p._entries.get(key)
    if ent is not None:
        return ent(*args)
    out = disp(*args)
    try:
        sig = tuple(typeof(a, Purpose.argument) for a in args)
        p._entries[key] = disp.overloads[sig].entry_point
    except (KeyError, AttributeError):  # numba internals moved: keep dispatching
        p._entries[key] = disp
    return out


def _matvec_small(p: Packed, x: np.ndarray) -> np.ndarray:
    """(T, cols) -> (T, rows) with the packed-integer (or F16/BF16) kernels."""
    sp = p.spec
    if x.shape[1] != p.colsp:
        x = np.pad(x, ((0, 0), (0, p.colsp - x.shape[1])))
    nq, nd, ns = p._x_widths
    batched = x.shape[0] > 1
    return _fast_call(p, ("mv", batched), _matvec, p._batched if batched else p._single, *p.planes, x,
                      p.shape[0], nq, nd, ns, 0 if sp.family == "flt" else sp.xblk, sp.sgroup, sp.stride, sp.unit)


def _dequant_kernel_order(p: Packed, ids: np.ndarray) -> np.ndarray:
    out = np.empty((len(ids), p.colsp), np.float32)
    if len(ids):
        _fast_call(p, "deq", _dequant_rows, p._single, *p.planes, ids, out)
    return out


def _small_t(spec: Spec) -> int:
    if spec.family == "flt":
        return SMALL_T_FLOAT
    return SMALL_T_8BIT if spec.bits == 8 else SMALL_T_QUANT


def linear(p: Packed, x: np.ndarray) -> np.ndarray:
    """x (T, cols) float32 -> (T, rows) float32 = x @ W.T.

    T <= SMALL_T_QUANT (8-bit codes: SMALL_T_8BIT, F16/BF16: SMALL_T_FLOAT): the
    packed-integer (F16/BF16: float) kernels, weights never dequantized, int8 activations.  Larger T:
    dequantize TILE_ELEMS weights (whole rows) at a time and multiply with BLAS (exact weights).
    F32 weights always use BLAS.
    """
    x = np.asarray(x)
    if not (x.dtype == np.float32 and x.flags.c_contiguous and x.flags.aligned and x.flags.writeable):
        x = np.array(x, dtype=np.float32, order="C")
    if x.ndim == 1:
        return linear(p, x[None])[0]
    rows, cols = p.shape
    if x.shape[1] != cols:
        raise ValueError(f"linear: x has {x.shape[1]} columns, weight {p.qtype} {p.shape} needs {cols}")
    T = x.shape[0]
    if p.qtype == "F32":
        w = p.planes[0].view(np.float32)[:, :cols]
        return np.dot(x, w.T)
    if T <= _small_t(p.spec):
        return _matvec_small(p, x)
    xk = x if p.colsp == cols else np.pad(x, ((0, 0), (0, p.colsp - cols)))
    if p.perm is not None:
        xk = xk[:, p.perm]
    y = np.empty((T, rows), np.float32)
    step = max(TILE_MIN_ROWS, TILE_ELEMS // p.colsp)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        tile = _dequant_kernel_order(p, np.arange(r0, r1, dtype=np.int64))
        y[:, r0:r1] = xk @ tile.T
    return y


def embed_rows(p: Packed, ids) -> np.ndarray:
    """Rows `ids` of the weight, dequantized: (len(ids), cols) float32 (token embedding lookup)."""
    ids = np.array(ids, dtype=np.int64).reshape(-1)
    rows, cols = p.shape
    if ids.size and (ids.min() < 0 or ids.max() >= rows):
        raise IndexError(f"embed_rows: id out of range [0, {rows})")
    out = _dequant_kernel_order(p, ids)
    if p.perm is not None:
        out = out[:, p._inv]
    return out[:, :cols] if p.colsp != cols else out


def dequantize(p: Packed) -> np.ndarray:
    """The whole weight as float32 (rows, cols)."""
    return embed_rows(p, np.arange(p.shape[0]))
