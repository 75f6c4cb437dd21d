"""The LLVM vector IR emitter every kernel module writes its inner loops with.

numba's auto-vectorizer does not find vpmaddubsw, and its scalar typing widens
integers to int64, so the row kernels are numba *intrinsics* that emit LLVM
vector IR directly through `E`: plain `<32 x i8>` loads, shifts and masks,
plus the x86 AVX2 dot-product instructions when the compile target has AVX2
(`llvm.x86.avx2.pmadd.ub.sw` / `pmadd.wd` / `psign.b` / `pshuf.b`).  Elsewhere
(ARM, old x86, or `EDGESLIM_PORTABLE_KERNELS=1`) the same steps are written as
portable widening multiplies, pairwise adds and selects, which LLVM lowers for
the target; tests run both variants and require identical results.  Where
the target also has AVX-512BW (`USE_AVX512`), the batched kernels run the
same dot steps on `<64 x i8>`, two chunks per instruction (superblock.py,
grouped.py), again with identical results.

Addresses are i64 integers (`ptr + byte offset`); every load and store is
`align 1`, so plane rows need no alignment.
"""
from __future__ import annotations

import functools
import os
import platform

from llvmlite import ir
from numba import config as _nb_config
from numba.core import cgutils


@functools.cache
def _host_features() -> dict:
    """The host CPU's LLVM feature map (read once)."""
    import llvmlite.binding as llvm

    return dict(llvm.get_host_cpu_features())


def _target_has(feature: str) -> bool:
    """Whether numba compiles for a CPU with this LLVM feature: the target the user pinned
    (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES), else the host."""
    if _nb_config.CPU_NAME or _nb_config.CPU_FEATURES:  # user pinned a generic/other target
        return f"+{feature}" in (_nb_config.CPU_FEATURES or "")
    return bool(_host_features().get(feature, False))


def _host_has_avx2() -> bool:
    """True when numba compiles for a CPU with AVX2 (then the x86 dot intrinsics are used)."""
    if os.environ.get("EDGESLIM_PORTABLE_KERNELS"):
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return _target_has("avx2")


USE_AVX2 = _host_has_avx2()


def _host_has_vnni() -> bool:
    """True when the AVX2 target also has a 256-bit vpdpbusd (AVX-VNNI, or AVX512-VNNI with VL);
    `EDGESLIM_NO_VNNI=1` turns it off (the AVX2 steps are then used, as on older CPUs)."""
    if not USE_AVX2 or os.environ.get("EDGESLIM_NO_VNNI"):
        return False
    return _target_has("avxvnni") or (_target_has("avx512vnni") and _target_has("avx512vl"))


USE_VNNI = _host_has_vnni()


def _host_has_avx512() -> bool:
    """True when the AVX2 target also has AVX-512BW (vpmaddubsw / vpmaddwd on 512-bit vectors, used by
    the batched super-block kernels); `EDGESLIM_NO_AVX512=1` turns it off (256-bit steps only)."""
    if not USE_AVX2 or os.environ.get("EDGESLIM_NO_AVX512"):
        return False
    return _target_has("avx512bw")


USE_AVX512 = _host_has_avx512()
USE_VNNI512 = USE_AVX512 and USE_VNNI and _target_has("avx512vnni")  # the 512-bit vpdpbusd

I8, I16, I32, I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
F16, F32 = ir.HalfType(), ir.FloatType()


def V(t, n):
    """<n x t>."""
    return ir.VectorType(t, n)


def array_addr(context, builder, ty, val):
    """(data address as i64, stride0 in bytes or None) of a numba array value."""
    a = context.make_array(ty)(context, builder, val)
    strides = cgutils.unpack_tuple(builder, a.strides)
    return builder.ptrtoint(a.data, I64), (strides[0] if ty.ndim > 1 else None)


# The x86 dot steps by input bytes: 32 (AVX2 / AVX-VNNI) or 64 (AVX-512BW / AVX512-VNNI).  64-byte
# operations stay whole zmm instructions even where the target prefers 256-bit vectors (znver4/5,
# Intel server cores): LLVM splits them only in functions marked "min-legal-vector-width", and
# numba's functions are not (checked in the assembly for znver5, icelake-server, skylake-avx512).
_X86_DOT = {  # (dot step, input bytes) -> (intrinsic, result type, argument types)
    ("maddubs", 32): ("llvm.x86.avx2.pmadd.ub.sw", V(I16, 16), [V(I8, 32), V(I8, 32)]),
    ("maddubs", 64): ("llvm.x86.avx512.pmaddubs.w.512", V(I16, 32), [V(I8, 64), V(I8, 64)]),
    ("madd", 32): ("llvm.x86.avx2.pmadd.wd", V(I32, 8), [V(I16, 16), V(I16, 16)]),
    ("madd", 64): ("llvm.x86.avx512.pmaddw.d.512", V(I32, 16), [V(I16, 32), V(I16, 32)]),
    ("dpbusd", 32): ("llvm.x86.avx512.vpdpbusd.256", V(I32, 8), [V(I32, 8), V(I8, 32), V(I8, 32)]),
    ("dpbusd", 64): ("llvm.x86.avx512.vpdpbusd.512", V(I32, 16), [V(I32, 16), V(I8, 64), V(I8, 64)]),
}


class E:
    """A few vector helpers over an llvmlite IRBuilder (addresses are i64 integers)."""

    def __init__(self, b: ir.IRBuilder, portable: bool, vnni: bool = True, avx512: bool = True):
        self.b, self.portable = b, portable or not USE_AVX2
        self.vnni = vnni and USE_VNNI and not self.portable  # emit vpdpbusd (see dpbusd)
        self.avx512 = avx512 and USE_AVX512 and not self.portable  # callers may use 64-byte vectors
        self.vnni512 = self.avx512 and self.vnni and USE_VNNI512  # dpbusd on 64 bytes

    # -- constants, addresses, memory
    def k(self, ty, v):
        if isinstance(ty, ir.VectorType):
            return ir.Constant(ty, [v] * ty.count)
        return ir.Constant(ty, v)

    def vec(self, ty, vals):
        """Constant vector of type ty with the given lane values."""
        return ir.Constant(ty, [int(v) if isinstance(ty.element, ir.IntType) else float(v) for v in vals])

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

    # -- code extraction from planes (u8 lanes); plane formats in planes.py
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

    def shr_var(self, q, amount):
        """Each lane of q shifted right by the i64 value `amount` (the same for all lanes)."""
        a = self.b.trunc(self.i(amount), q.type.element)
        return self.b.lshr(q, self.splat(a, q.type.count))

    def lut16(self, table, idx):
        """<32 x i8> of table[idx] for 4-bit indices idx (table: 16 ints in -128..127):
        one vpshufb on AVX2, else a select tree over the index bits."""
        if not self.portable:
            t = ir.Constant(V(I8, 32), [int(v) & 0xFF for v in list(table) * 2])
            f = self.fn("llvm.x86.avx2.pshuf.b", V(I8, 32), [V(I8, 32), V(I8, 32)])
            return self.b.call(f, [t, idx])
        vals = [self.k(idx.type, int(v) & 0xFF) for v in table]
        for bit in range(4):
            m = self.b.icmp_unsigned("!=", self.b.and_(idx, self.k(idx.type, 1 << bit)), self.k(idx.type, 0))
            vals = [self.b.select(m, vals[2 * i + 1], vals[2 * i]) for i in range(len(vals) // 2)]
        return vals[0]

    # -- integer dot steps: 32-byte vectors, or 64-byte ones (x86 only when self.avx512)
    def maddubs(self, u8, s8):
        """<n x u8> * <n x s8> -> <n/2 x i16> pair sums (never saturates for our ranges)."""
        n = u8.type.count
        if not self.portable:
            return self.b.call(self.fn(*_X86_DOT["maddubs", n]), [u8, s8])
        p = self.b.mul(self.b.zext(u8, V(I16, n)), self.b.sext(s8, V(I16, n)))
        return self.b.add(self.shuf(p, range(0, n, 2)), self.shuf(p, range(1, n, 2)))

    def madd(self, a16, b16):
        """<n x i16> * <n x i16> -> <n/2 x i32> pair sums."""
        n = a16.type.count
        if not self.portable:
            return self.b.call(self.fn(*_X86_DOT["madd", 2 * n]), [a16, b16])
        p = self.b.mul(self.b.sext(a16, V(I32, n)), self.b.sext(b16, V(I32, n)))
        return self.b.add(self.shuf(p, range(0, n, 2)), self.shuf(p, range(1, n, 2)))

    def pair_sum16(self, a16):
        """<n x i16> -> <n/2 x i32> sums of adjacent pairs (vpmaddwd by ones on x86)."""
        n = a16.type.count
        if not self.portable:
            return self.madd(a16, self.k(a16.type, 1))
        w = self.b.sext(a16, V(I32, n))
        return self.b.add(self.shuf(w, range(0, n, 2)), self.shuf(w, range(1, n, 2)))

    def lane_bcast16(self, v, c):
        """<16 x i16> -> element c of each 128-bit half broadcast across that half
        (an in-lane pattern: one vpshufb, or a vpbroadcastw when both halves agree)."""
        return self.shuf(v, [c] * 8 + [8 + c] * 8)

    def sign(self, x8, s8):
        """x8 with the sign of s8 applied: x * sign(s) per lane (vpsignb; 0 where s is 0)."""
        if not self.portable:
            return self.b.call(self.fn("llvm.x86.avx2.psign.b", V(I8, 32), [V(I8, 32), V(I8, 32)]), [x8, s8])
        z = self.k(x8.type, 0)
        neg = self.b.select(self.b.icmp_signed("<", s8, z), self.b.sub(z, x8), x8)
        return self.b.select(self.b.icmp_signed("==", s8, z), z, neg)

    def abs8(self, w8):
        """|w| per signed byte (vpabsb; -128 stays 128 as an unsigned byte)."""
        neg = self.b.icmp_signed("<", w8, self.k(w8.type, 0))
        return self.b.select(neg, self.b.sub(self.k(w8.type, 0), w8), w8)

    def dpbusd(self, acc32, u8, s8):
        """acc32 + <n/4 x i32> sums of 4 adjacent u8 * s8 products (vpdpbusd: no i16 step, so no
        saturation; only when self.vnni, and self.vnni512 for 64 bytes).  acc32 None starts from zero."""
        n = u8.type.count
        acc = self.k(V(I32, n // 4), 0) if acc32 is None else acc32
        return self.b.call(self.fn(*_X86_DOT["dpbusd", n]), [acc, u8, s8])

    def negate_where(self, neg, x8):
        """x8 with the lanes where the i1 mask `neg` is set negated (a masked vpsubb from zero: there
        is no 512-bit vpsignb; -128 stays -128, as there)."""
        return self.b.select(neg, self.b.sub(self.k(x8.type, 0), x8), x8)

    def cat(self, a, b):
        """Two vectors of one type joined: a in the low lanes, b in the high ones."""
        n = a.type.count
        return self.b.shuffle_vector(a, b, ir.Constant(V(I32, 2 * n), list(range(2 * n))))

    def pairs(self, vs):
        """Vectors 2j and 2j + 1 of `vs` joined (`cat`): the operands of a 512-bit pass."""
        return [self.cat(vs[c], vs[c + 1]) for c in range(0, len(vs), 2)]

    def below0(self, v):
        """The i1 mask of v's negative lanes."""
        return self.b.icmp_signed("<", v, self.k(v.type, 0))

    def fold(self, v):
        """A vector's high half added to its low half (<16 x i32> -> <8 x i32>: vextracti64x4 + vpaddd)."""
        n = v.type.count // 2
        return self.b.add(self.shuf(v, range(n)), self.shuf(v, range(n, 2 * n)))

    def sign_dot(self, w8, x8):
        """Signed <32 x i8> . <32 x i8> -> <16 x i16>, via |w| * (x with w's sign)."""
        aw = self.abs8(w8)
        if self.portable:
            neg = self.b.icmp_signed("<", w8, self.k(w8.type, 0))
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
