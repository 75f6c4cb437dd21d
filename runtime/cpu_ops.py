"""numba versions of the non-matmul steps of a block, for the numba backend's decode.

The numpy code in `ops.py` is the reference; these functions compute the same
math without the per-call overhead of a dozen small numpy operations (measured
on the 12-layer bench model: RMSNorm, RoPE, the fp16 cache's astype and the
attention's reshapes cost 7 ms of a 13.5 ms token, more than the matmuls):

    rms_norm(x, w, eps)                      x (T, D) -> (T, D)
    swiglu_halves(gu), geglu_halves(gu)      gu (T, 2F) = [gate | up] -> (T, F)
    head_norms(qkv, H, Hkv, Hd, qw, kw, eps) per-head RMSNorm of q and k, in place (Gemma 3)
    attend_f16(qkv, n_head, cos, sin, neox, kc, vc, start, scale, window, ring) -> (T, H*Hd)
        RoPE on q and k, k/v stored into the fp16 cache (or its ring), causal GQA attention
        (optionally over a sliding window).

The fp16 KV cache is read and written here as its raw uint16 bits, because
numba has no float16 type:

    fp16 bits   s eeeee mmmmmmmmmm
    fp32 bits   s eeeeeeee mmmmmmmmmm0000000000000
    read:  ((h & 0x7fff) << 13) as fp32, times 2^112 (rebias 15 -> 127; exact for
           normals, subnormals and zero), sign bit moved to bit 31.
           fp16 inf/nan read as large finite numbers (the cache never holds them).
    write: round to nearest even, the same bits numpy's astype(float16) gives
           (tests/test_cpu_ops.py checks this on every exponent range).
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from .threads import Chooser, serial_and_parallel

_TWO112 = np.float32(2.0 ** 112)
_HIDDEN = np.float32(-3.0e38)  # score of a masked key


@intrinsic
def _as_f32(typingctx, bits):
    """Reinterpret a uint32 as float32 (an LLVM bitcast; vectorizes)."""
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def _as_u32(typingctx, val):
    """Reinterpret a float32 as uint32."""
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@njit(inline="always")
def _h2f(h):
    """fp16 bits (uint16) -> float32 value."""
    u = np.uint32(h)
    mag = _as_f32((u & np.uint32(0x7FFF)) << np.uint32(13)) * _TWO112
    return _as_f32(_as_u32(mag) | ((u & np.uint32(0x8000)) << np.uint32(16)))


@njit(inline="always")
def _f2h(x):
    """float32 value -> fp16 bits (uint16), round to nearest even, overflow to inf."""
    b = _as_u32(np.float32(x))
    sign = np.uint32((b >> np.uint32(16)) & np.uint32(0x8000))
    e = np.int32((b >> np.uint32(23)) & np.uint32(0xFF))
    m = np.uint32(b & np.uint32(0x7FFFFF))
    if e == 255:  # inf / nan
        return np.uint16(sign | np.uint32(0x7C00) | (np.uint32(0x200) if m else np.uint32(0)))
    e16 = e - 112  # e - 127 + 15
    if e16 >= 31:
        return np.uint16(sign | np.uint32(0x7C00))
    if e16 <= 0:  # subnormal half (or zero)
        if e16 < -10:
            return np.uint16(sign)
        m = m | np.uint32(0x800000)
        shift = np.uint32(14 - e16)
        half = m >> shift
        rem = m & ((np.uint32(1) << shift) - np.uint32(1))
        mid = np.uint32(1) << (shift - np.uint32(1))
        if rem > mid or (rem == mid and (half & np.uint32(1))):
            half += np.uint32(1)
        return np.uint16(sign | half)
    half = (np.uint32(e16) << np.uint32(10)) | (m >> np.uint32(13))
    rem = m & np.uint32(0x1FFF)
    if rem > np.uint32(0x1000) or (rem == np.uint32(0x1000) and (half & np.uint32(1))):
        half += np.uint32(1)  # a carry into the exponent is the correct rounding (up to inf)
    return np.uint16(sign | half)


@njit(cache=True)
def f32_to_f16_bits(x):
    """float32 array (any shape, C order) -> uint16 fp16 bits of the same shape."""
    flat = x.reshape(-1)
    out = np.empty(flat.size, np.uint16)
    for i in range(flat.size):
        out[i] = _f2h(flat[i])
    return out.reshape(x.shape)


@njit(cache=True)
def f16_bits_to_f32(h):
    """uint16 fp16 bits (any shape, C order) -> float32 values."""
    flat = h.reshape(-1)
    out = np.empty(flat.size, np.float32)
    for i in range(flat.size):
        out[i] = _h2f(flat[i])
    return out.reshape(h.shape)


@njit(cache=True, fastmath=True)
def rms_norm(x, w, eps):
    """x * w / sqrt(mean(x^2) + eps) per row.  x (T, D) float32, w (D,) -> (T, D)."""
    T, D = x.shape
    out = np.empty((T, D), np.float32)
    for t in range(T):
        s = np.float32(0.0)
        for i in range(D):
            s += x[t, i] * x[t, i]
        inv = np.float32(1.0) / np.sqrt(s / np.float32(D) + np.float32(eps))
        for i in range(D):
            out[t, i] = x[t, i] * inv * w[i]
    return out


@njit(cache=True, fastmath=True)
def swiglu_halves(gu):
    """silu(gate) * up for gu (T, 2F) = [gate (T, F) | up (T, F)] -> (T, F)."""
    T, F2 = gu.shape
    F = F2 // 2
    out = np.empty((T, F), np.float32)
    for t in range(T):
        for i in range(F):
            g = gu[t, i]
            # exp(-g) overflows to inf for g < -88: g / inf = -0, silu's limit
            out[t, i] = g / (np.float32(1.0) + np.exp(-g)) * gu[t, F + i]
    return out


@njit(cache=True, fastmath=True)
def geglu_halves(gu):
    """gelu_tanh(gate) * up for gu (T, 2F) = [gate (T, F) | up (T, F)] -> (T, F) (Gemma's FFN)."""
    T, F2 = gu.shape
    F = F2 // 2
    c = np.float32(math.sqrt(2.0 / math.pi))
    out = np.empty((T, F), np.float32)
    for t in range(T):
        for i in range(F):
            g = gu[t, i]
            out[t, i] = np.float32(0.5) * g * (np.float32(1.0) + np.tanh(c * (g + np.float32(0.044715) * g * g * g))) \
                * gu[t, F + i]
    return out


@njit(cache=True, fastmath=True)
def head_norms(qkv, n_head, n_head_kv, hd, qw, kw, eps):
    """In place: RMSNorm of every q head (weight qw (hd,)) and k head (kw) of qkv (T, (H + 2*Hkv)*hd)."""
    T = qkv.shape[0]
    for t in range(T):
        for h in range(n_head + n_head_kv):
            w = qw if h < n_head else kw
            base = h * hd
            s = np.float32(0.0)
            for i in range(hd):
                s += qkv[t, base + i] * qkv[t, base + i]
            inv = np.float32(1.0) / np.sqrt(s / np.float32(hd) + np.float32(eps))
            for i in range(hd):
                qkv[t, base + i] = qkv[t, base + i] * inv * w[i]


@njit(cache=True, fastmath=True)
def _roped(qkv, col0, n, hd, cos, sin, start, neox):
    """Heads col0/hd .. +n of qkv (T, cols), rotated: (T, n, hd); cos/sin (n_ctx, n_rot/2) give n_rot."""
    T = qkv.shape[0]
    out = np.empty((T, n, hd), np.float32)
    half = cos.shape[1]
    for t in range(T):
        c, s = cos[start + t], sin[start + t]
        for h in range(n):
            base = col0 + h * hd
            dst = out[t, h]
            for i in range(hd):
                dst[i] = qkv[t, base + i]
            for i in range(half):
                ia, ib = (i, i + half) if neox else (2 * i, 2 * i + 1)
                a, b = qkv[t, base + ia], qkv[t, base + ib]
                dst[ia] = a * c[i] - b * s[i]
                dst[ib] = a * s[i] + b * c[i]
    return out


@njit(inline="always")
def _store_f16(kc, vc, k, qkv, v0, start, ring):
    """k (T, Hkv, Hd) and the v columns v0.. of qkv as fp16 bits into slots start+t (or (start+t) % ring)."""
    T, Hkv, Hd = k.shape
    for t in range(T):
        slot = start + t if ring == 0 else (start + t) % ring
        for h in range(Hkv):
            for d in range(Hd):
                kc[h, d, slot] = _f2h(k[t, h, d])
                vc[h, slot, d] = _f2h(qkv[t, v0 + h * Hd + d])


def _attend(qkv, n_head, cos, sin, neox, kc, vc, start, scale, window, ring):
    """RoPE + fp16 cache store + causal grouped-query attention, in one call.

    qkv (T, (H + 2*Hkv)*Hd) float32: the q | k | v projections of T tokens before RoPE.
    cos, sin (n_ctx, n_rot/2): `ops.Rope` tables.  neox: RoPE pairing (see ops.Rope).
    kc (Hkv, Hd, cap), vc (Hkv, cap, Hd): one layer of the fp16 cache as uint16 bits;
    positions start..start+T-1 are written, position p in slot p (ring == 0) or p % ring.
    scale multiplies q; window > 0: token t sees positions start+t-window+1..start+t only
    (a ring must have at least window + T - 1 slots).  Returns (T, H*Hd) float32; query
    head h reads kv head h // (H / Hkv); token t sees positions up to start+t.
    """
    T = qkv.shape[0]
    Hkv, Hd = kc.shape[0], kc.shape[1]
    H = n_head
    G = H // Hkv
    q = _roped(qkv, 0, H, Hd, cos, sin, start, neox)  # (T, H, Hd)
    k = _roped(qkv, H * Hd, Hkv, Hd, cos, sin, start, neox)  # (T, Hkv, Hd)
    _store_f16(kc, vc, k, qkv, (H + Hkv) * Hd, start, ring)
    last = start + T - 1
    n_slots = last + 1 if ring == 0 else min(ring, last + 1)
    scale = np.float32(scale)
    out = np.empty((T, H * Hd), np.float32)
    for hk in prange(Hkv):
        sc = np.empty(n_slots, np.float32)
        acc = np.empty(Hd, np.float32)
        for g in range(G):
            hq = hk * G + g
            for t in range(T):
                qp = start + t
                for s in range(n_slots):
                    sc[s] = 0.0
                for d in range(Hd):  # scores = q . K[:, slots]; K rows contiguous in s
                    qd = q[t, hq, d] * scale
                    krow = kc[hk, d]
                    for s in range(n_slots):
                        sc[s] += qd * _h2f(krow[s])
                m = _HIDDEN
                for s in range(n_slots):  # mask: future positions and those past the window
                    kp = s if ring == 0 else last - (last - s) % ring  # the position slot s holds
                    if kp > qp or (window > 0 and qp - kp >= window):
                        sc[s] = _HIDDEN  # finite (fastmath assumes no infinities): exp(_HIDDEN - m) = 0
                    m = max(m, sc[s])
                tot = np.float32(0.0)
                for s in range(n_slots):
                    e = np.exp(sc[s] - m)
                    sc[s] = e
                    tot += e
                for d in range(Hd):
                    acc[d] = 0.0
                for s in range(n_slots):  # acc (Hd,) = p . V[slots]; V rows contiguous in d
                    p = sc[s]
                    if p == 0.0:
                        continue
                    vrow = vc[hk, s]
                    for d in range(Hd):
                        acc[d] += p * _h2f(vrow[d])
                inv = np.float32(1.0) / tot
                for d in range(Hd):
                    out[t, hq * Hd + d] = acc[d] * inv
    return out


# Two compilations of one body: below PARALLEL_ATTN_WORK (kv elements read per call) a
# parallel region costs more than it saves (measured: ~58 us per layer at ~70 positions);
# above it the kernels' chooser runs whichever copy has been cheaper lately (a busy machine
# makes parallel regions wait for the scheduler: threads.py).
attend_serial, attend_parallel = serial_and_parallel(_attend, fastmath=True)
PARALLEL_ATTN_WORK = 1 << 18
ATTN_CHOOSER = Chooser(PARALLEL_ATTN_WORK)
_ATTEND = (attend_serial, attend_parallel)


def attend_f16(qkv, n_head, cos, sin, neox, kc, vc, start, scale=None, window=0, ring=0):
    """`_attend` (see there), parallel over kv heads when the cache read is large enough.
    scale defaults to 1/sqrt(head size)."""
    hd = kc.shape[1]
    seen = start + qkv.shape[0] if ring == 0 else min(ring, start + qkv.shape[0])
    work = kc.shape[0] * hd * seen * (n_head // kc.shape[0])
    scale = 1.0 / math.sqrt(hd) if scale is None else scale
    return ATTN_CHOOSER.call(work, qkv.shape[0] > 1, _ATTEND, qkv, n_head, cos, sin, neox, kc, vc, start,
                             float(scale), int(window), int(ring))
