"""numba versions of the non-matmul steps of a block, for the numba backend.

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
    attention_f32(q, kt, v, start, scale, window, kpos0) -> (T, H*Hd)
        `ops.attention` for long prompts: parallel, causal keys only, a vectorizable exp (`_exp`).

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


_LOG2E = np.float32(1.4426950408889634)
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)


@njit(inline="always", fastmath=True)
def _exp(x):
    """e^x in float32 for any x (below -87 it returns ~1e-38, above 88 ~1.6e38): 2^n * e^r with
    n = round(x / ln 2), |r| <= ln2 / 2 (ln 2 split in two for exactness), e^r by its degree-6
    Taylor polynomial (relative error < 2e-7), 2^n built in the exponent bits.  Written by hand
    because numba's np.exp is a scalar libm call unless Intel's SVML is installed; this one is
    plain arithmetic, so LLVM vectorizes the loops that use it."""
    x = min(max(x, np.float32(-87.0)), np.float32(88.0))
    n = np.floor(x * _LOG2E + np.float32(0.5))
    r = x - n * _LN2_HI - n * _LN2_LO
    p = np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    return p * _as_f32(np.uint32(np.int32(n) + np.int32(127)) << np.uint32(23))


def _swiglu_halves(gu):
    """silu(gate) * up for gu (T, 2F) = [gate (T, F) | up (T, F)] -> (T, F)."""
    T, F2 = gu.shape
    F = F2 // 2
    out = np.empty((T, F), np.float32)
    for t in prange(T):
        for i in range(F):
            g = gu[t, i]
            out[t, i] = g / (np.float32(1.0) + _exp(-g)) * gu[t, F + i]  # g < -87: g / 1.6e38 ~ -0
    return out


def _geglu_halves(gu):
    """gelu_tanh(gate) * up for gu (T, 2F) = [gate (T, F) | up (T, F)] -> (T, F) (Gemma's FFN).
    tanh(z) = 1 - 2 / (e^(2z) + 1), with the vectorizable `_exp`."""
    T, F2 = gu.shape
    F = F2 // 2
    c = np.float32(math.sqrt(2.0 / math.pi))
    out = np.empty((T, F), np.float32)
    for t in prange(T):
        for i in range(F):
            g = gu[t, i]
            th = np.float32(1.0) - np.float32(2.0) / (_exp(np.float32(2.0) * c * (g + np.float32(0.044715) * g * g * g))
                                                     + np.float32(1.0))
            out[t, i] = np.float32(0.5) * g * (np.float32(1.0) + th) * gu[t, F + i]
    return out


# Serial below ACT_PARALLEL_ROWS tokens (a decode step's few thousand elements take
# microseconds, less than waking a thread); prompts split their rows over the threads.
ACT_PARALLEL_ROWS = 4
_SWIGLU = serial_and_parallel(_swiglu_halves, fastmath=True)
_GEGLU = serial_and_parallel(_geglu_halves, fastmath=True)


def swiglu_halves(gu):
    """silu(gate) * up for gu (T, 2F) = [gate | up] -> (T, F)."""
    return _SWIGLU[gu.shape[0] >= ACT_PARALLEL_ROWS](gu)


def geglu_halves(gu):
    """gelu_tanh(gate) * up for gu (T, 2F) = [gate | up] -> (T, F)."""
    return _GEGLU[gu.shape[0] >= ACT_PARALLEL_ROWS](gu)


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


ATTN_TB = 16  # query positions per parallel job of `attention_f32`


@njit(inline="always", fastmath=True)
def _scores(row, qv, K, lo, scale):
    """row (n,) = scale * (qv . K[:, lo:lo+n]); qv (Hd,), K (Hd, S) keys transposed (rows contiguous
    in s).  Four key rows per pass: one load and store of row[s] per four fmas (1.5x faster).
    The loops index 1-D slices from 0: numba then knows no index is negative and LLVM vectorizes
    (a variable start needs negative-index checks; a 2-D slice has a stride LLVM cannot assume)."""
    Hd, n = K.shape[0], row.shape[0]
    for s in range(n):
        row[s] = 0.0
    d4 = Hd - Hd % 4
    for d in range(0, d4, 4):
        q0, q1, q2, q3 = qv[d] * scale, qv[d + 1] * scale, qv[d + 2] * scale, qv[d + 3] * scale
        k0, k1, k2, k3 = K[d, lo:lo + n], K[d + 1, lo:lo + n], K[d + 2, lo:lo + n], K[d + 3, lo:lo + n]
        for s in range(n):
            row[s] += q0 * k0[s] + q1 * k1[s] + q2 * k2[s] + q3 * k3[s]
    for d in range(d4, Hd):
        qd, k0 = qv[d] * scale, K[d, lo:lo + n]
        for s in range(n):
            row[s] += qd * k0[s]


@njit(inline="always", fastmath=True)
def _softmax_row(row):
    """row = exp(row - max(row)), in place; returns their sum."""
    m = row[0]
    for s in range(1, row.shape[0]):
        m = max(m, row[s])
    tot = np.float32(0.0)
    for s in range(row.shape[0]):
        e = _exp(row[s] - m)
        row[s] = e
        tot += e
    return tot


@njit(inline="always", fastmath=True)
def _weighted_rows(acc, p, V, lo):
    """acc (Hd,) = p (n,) . V[lo:lo+n]; V (S, Hd) rows contiguous in d, four rows per pass (2x faster
    than one: one load and store of acc per four fmas)."""
    n = p.shape[0]
    for d in range(acc.shape[0]):
        acc[d] = 0.0
    n4 = n - n % 4
    for s in range(0, n4, 4):
        p0, p1, p2, p3 = p[s], p[s + 1], p[s + 2], p[s + 3]
        v0, v1, v2, v3 = V[lo + s], V[lo + s + 1], V[lo + s + 2], V[lo + s + 3]
        for d in range(acc.shape[0]):
            acc[d] += p0 * v0[d] + p1 * v1[d] + p2 * v2[d] + p3 * v3[d]
    for s in range(n4, n):
        v0 = V[lo + s]
        for d in range(acc.shape[0]):
            acc[d] += p[s] * v0[d]


def _attention_f32(q, kt, v, start, scale, window, kpos0):
    """`ops.attention` for long prompts (same arguments and result), parallel over (kv head, block of
    ATTN_TB queries), each query reading only the keys it sees (causal: half the products of the
    full score matrix).

    q (T, H, Hd), kt (Hkv, Hd, S) float32 keys (transposed), v (Hkv, S, Hd) at positions kpos0..;
    returns (T, H*Hd).  Query t (position start+t) sees keys up to its position, and with
    window > 0 only the last `window` of them."""
    T, H, Hd = q.shape
    Hkv, S = v.shape[0], v.shape[1]
    G = H // Hkv
    nb = (T + ATTN_TB - 1) // ATTN_TB
    out = np.empty((T, H * Hd), np.float32)
    scale = np.float32(scale)
    for job in prange(Hkv * nb):
        hk, t0 = job // nb, (job % nb) * ATTN_TB
        row = np.empty(S, np.float32)  # scores, then probabilities
        acc = np.empty(Hd, np.float32)
        for t in range(t0, min(T, t0 + ATTN_TB)):
            qp = start + t - kpos0  # the query's own key index
            lo, hi = (max(0, qp - window + 1) if window > 0 else 0), min(S, qp + 1)
            r = row[:hi - lo]
            for g in range(G):
                hq = hk * G + g
                _scores(r, q[t, hq], kt[hk], lo, scale)
                inv = np.float32(1.0) / _softmax_row(r)
                _weighted_rows(acc, r, v[hk], lo)
                for d in range(Hd):
                    out[t, hq * Hd + d] = acc[d] * inv
    return out


_ATTENTION_F32 = serial_and_parallel(_attention_f32, fastmath=True)


def attention_f32(q, kt, v, start, scale=None, window=0, kpos0=0):
    """Causal grouped-query attention over float32 keys/values, `ops.attention`'s contract
    (scale defaults to 1/sqrt(head size)); the parallel copy (one call covers many queries)."""
    scale = 1.0 / math.sqrt(q.shape[2]) if scale is None else scale
    return _ATTENTION_F32[1](np.ascontiguousarray(q, dtype=np.float32), np.ascontiguousarray(kt, dtype=np.float32),
                             np.ascontiguousarray(v, dtype=np.float32), int(start), float(scale), int(window),
                             int(kpos0))
