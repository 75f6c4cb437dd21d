"""Vectorized scale searches shared by the k-quants.

A k-quant super-block of 256 weights is cut into S sub-blocks of n weights.
Each sub-block j is reconstructed from small integer codes L:

    symmetric  (Q3_K, Q6_K):        w ~ d * q[j] * L                L in [lo, hi], q[j] signed int
    asymmetric (Q2_K, Q4_K, Q5_K):  w ~ d * sc[j] * L - dmin * m[j]  L in [0, nmax], sc/m unsigned ints

with one fp16 `d` (and `dmin`) per super-block.  The search minimises the
(importance-)weighted squared error of exactly what ggml will dequantize:

  1. per sub-block, a float scale (and min) is fitted: a grid of candidate
     scales in the spirit of llama.cpp's make_qx_quants / make_qkx2_quants is
     tried (codes by rounding, then a weighted least-squares fit of scale and
     min), followed by Lloyd steps (re-round the codes, refit);
  2. per super-block, the fp16 super-scales and the integer sub-scales are
     chosen on per-sub-block sufficient statistics (sums of w, w*L, w*L^2,
     w*x, w*x*L, w*x^2), on which the error of any (scale, min) pair is a
     closed-form quadratic: integer sub-scales are the error-optimal
     neighbours of the continuous optimum, super-scales alternate with a
     weighted least-squares refit and are rounded to fp16 at every step;
  3. codes are re-rounded to the chosen scales (the nearest code is optimal
     for fixed scales, so this never increases the error) and step 2 repeats
     with the current choice among its starts (so the error never increases).

Layout: weights are held element-major, x[i, b, j] = weight i of sub-block j
of super-block b, shape (n, B, S), so that every per-sub-block sum is a sum
over axis 0 (a handful of contiguous vector adds) and per-sub-block values
(B, S) broadcast against (n, B, S) directly.  The Python loops are over
candidates and iterations only, never over blocks.  Hand-written because no
field library quantizes to ggml's k-quant layouts (gguf-py only dequantizes).
"""
from __future__ import annotations

import numpy as np

from ._common import f16, safe_div, wsum

F64 = np.float64

# search effort (tuned on random normal / student-t weights against llama.cpp, see tests)
ASYM_INITS = ((1.0, 1.0), (0.97, 1.0))  # (d, dmin) = (max a, max b) / scmax * t
SYM_INITS_LO = (1.0, 1.03)  # d = extreme sub-scale / qlo * t
SYM_INITS_HI = (1.0,)  # d = extreme sub-scale / qhi * t
N_ALT = 2  # alternations of (integer sub-scales | fp16 super-scales) per start
N_OUTER = 1  # extra re-rounding rounds of the codes
SC_OFFSETS = (-1, 0, 1)  # sub-scale candidates around rint(a*/d)
N_LLOYD = 2  # Lloyd steps after the sub-block grid


def to_elem_major(x: np.ndarray, S: int) -> np.ndarray:
    """(B, S*n) -> (n, B, S) contiguous."""
    B = x.shape[0]
    return np.ascontiguousarray(x.reshape(B, S, -1).transpose(2, 0, 1))


def from_elem_major(L: np.ndarray) -> np.ndarray:
    """(n, B, S) -> (B, S*n)."""
    n, B, S = L.shape
    return np.ascontiguousarray(L.transpose(1, 2, 0)).reshape(B, S * n)


def sum0(a: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """sum_i w a over axis 0 (the elements of each sub-block / group)."""
    return a.sum(axis=0) if w is None else np.einsum("i...,i...->...", a, w)


def dot0(a, b, w=None):
    """sum_i w a b over axis 0."""
    return np.einsum("i...,i...->...", a, b) if w is None else np.einsum("i...,i...,i...->...", a, b, w)


def rint_clip(v: np.ndarray, lo, hi) -> np.ndarray:
    """Round half to even (ggml's nearest_int) and clip, in place."""
    np.rint(v, out=v)
    return np.clip(v, lo, hi, out=v)


# --------------------------------------------------------------------------
# symmetric: w ~ d * q[j] * L
# --------------------------------------------------------------------------
def sym_subblock_fit(x, w, lo, hi, factors, n_lloyd=None, rounder=None):
    """Best float scale per sub-block.  x: (n, ...) float32, w: same or None.  Returns s (...) float32.

    `factors` are (value, offset) pairs: the candidate scale maps the
    sub-block's extreme weight to code `value` (negative values use the extra
    code `lo` of [lo, hi]) and `offset` moves the rounding thresholds away from
    (> 0) or towards (< 0) zero.  Each candidate's codes get a least-squares
    scale; the best is refined by Lloyd steps (re-round, refit).  `rounder(v)`
    maps scaled weights to code values (default: nearest integer in [lo, hi];
    a non-uniform grid such as IQ4's table passes its own nearest-value rule).
    """
    n_lloyd = N_LLOYD if n_lloyd is None else n_lloyd
    rounder = rounder or (lambda v: rint_clip(v, lo, hi))
    idx = np.abs(x).argmax(axis=0)
    m = np.take_along_axis(x, idx[None], axis=0)[0]  # signed extreme
    inv_m = safe_div(np.float32(1), m).astype(np.float32)
    best_gain = np.full(m.shape, -1.0, np.float32)
    best_s = np.zeros(m.shape, np.float32)
    for f, off in factors:
        v = x * (np.float32(f) * inv_m)
        if off:
            v += np.copysign(np.float32(off), v)
        L = rounder(v)
        best_gain, best_s = _sym_keep(x, w, L, best_gain, best_s)
    for _ in range(n_lloyd):
        L = rounder(x * safe_div(np.float32(1), best_s).astype(np.float32))
        best_gain, best_s = _sym_keep(x, w, L, best_gain, best_s)
    return best_s


def _sym_keep(x, w, L, best_gain, best_s):
    """Least-squares scale for codes L; keep it where it removes more error (gain = sxl^2/sll)."""
    sxl, sll = dot0(L, x, w), dot0(L, L, w)
    gain = safe_div(sxl * sxl, sll)
    better = gain > best_gain
    return np.where(better, gain, best_gain), np.where(better, safe_div(sxl, sll), best_s)


def sym_choose(sxl, sll, sxx, qlo, qhi, init_d, qround=None):
    """Pick fp16 d (B,) and integer q (B, S) in [qlo, qhi] minimising sum_j E_j(d q_j).

    E_j(e) = sxx - 2 e sxl + e^2 sll on (B, S) float64 stats; init_d: list of (B,) starts.
    Given d the best q_j is the nearest integer to s_j/d (E_j is a parabola in
    q_j with vertex s_j/d); given q the best d is the weighted least-squares fit.
    qround(v) -> nearest allowed q (default: nearest integer in [qlo, qhi]).
    """
    qround = qround or (lambda v: np.clip(np.rint(v), qlo, qhi))
    s = safe_div(sxl, sll)
    best_err = np.full(sxl.shape[0], np.inf)
    best_d = np.zeros(sxl.shape[0], np.float32)
    best_q = np.zeros(sxl.shape, F64)
    for d0 in init_d:
        d = f16(d0)
        for _ in range(N_ALT):
            d64 = d[:, None].astype(F64)
            q = qround(safe_div(s, d64))
            e = d64 * q
            err = (sxx + e * (e * sll - 2 * sxl)).sum(-1)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_d = np.where(better, d, best_d)
            best_q = np.where(better[:, None], q, best_q)
            d = f16(safe_div((q * sxl).sum(-1), (q * q * sll).sum(-1)))
    return best_d, best_q


def sym_quantize(x, w, lo, hi, qlo, qhi, factors, rounder=None):
    """Full symmetric search.  x: (n, B, S) float32 element-major, w: same or None.

    Returns d (B,) float32 fp16-exact, q (B, S) int32 in [qlo, qhi], L (n, B, S) int8 codes in [lo, hi]
    (code values of `rounder`'s grid when one is given, see `sym_subblock_fit`).
    """
    rounder = rounder or (lambda v: rint_clip(v, lo, hi))
    s = sym_subblock_fit(x, w, lo, hi, factors, rounder=rounder)
    sxx = dot0(x, x, w).astype(F64)
    ext = np.take_along_axis(s, np.abs(s).argmax(axis=1)[:, None], axis=1)[:, 0]
    inits = [ext / qlo * t for t in SYM_INITS_LO] + [ext / qhi * t for t in SYM_INITS_HI]
    e = s
    d = None
    for _ in range(N_OUTER + 1):
        L = rounder(x * safe_div(np.float32(1), e).astype(np.float32))
        sxl, sll = dot0(L, x, w).astype(F64), dot0(L, L, w).astype(F64)
        d, q = sym_choose(sxl, sll, sxx, qlo, qhi, inits if d is None else inits + [d])
        e = (d[:, None] * q).astype(np.float32)
    L = rounder(x * safe_div(np.float32(1), e).astype(np.float32))
    return d, q.astype(np.int32), L.astype(np.int8)


def sym_refine_f16(x, w, d, rounder, n_iter=3, q=None):
    """Weighted Lloyd steps on blocks with one fp16 scale: x ~ d * code, x (B, n), d (B,) fp16-exact.

    Starting from codes q (default: x rounded to d), each step refits d by
    weighted least squares (rounded to fp16) and re-rounds the codes to it; per
    block the better of old and new is kept, so the weighted error never
    increases.  Returns d (B,) and the code values (B, n).
    """
    if q is None:
        q = rounder(x * safe_div(np.float32(1), d).astype(np.float32)[:, None])
    best_err = wsum((x - d[:, None] * q) ** 2, w)
    for _ in range(n_iter):
        d_new = f16(safe_div(wsum(x * q, w), wsum(q * q, w)))
        q_new = rounder(x * safe_div(np.float32(1), d_new).astype(np.float32)[:, None])
        err = wsum((x - d_new[:, None] * q_new) ** 2, w)
        better = err < best_err
        d = np.where(better, d_new, d)
        q = np.where(better[:, None], q_new, q)
        best_err = np.where(better, err, best_err)
    return d, q


# --------------------------------------------------------------------------
# asymmetric: w ~ a[j] * L - b[j],  a = d * sc, b = dmin * m
# --------------------------------------------------------------------------
def _ls_scale_min(sw, sl, sll, sx, sxl, free_min=False):
    """Weighted least-squares (a, b) for x ~ a L - b with b >= 0 (ggml's k-quant min is <= 0);
    with free_min b may take either sign (the legacy types store any offset)."""
    D = sw * sll - sl * sl
    a = safe_div(sw * sxl - sl * sx, D)
    b = safe_div(a * sl - sx, sw)
    if free_min:  # all codes equal: the offset alone carries the (weighted) mean
        return np.where(D <= 0, 0, a), np.where(D <= 0, safe_div(-sx, sw), b)
    clip = (b < 0) | (D <= 0)
    a = np.where(clip, safe_div(sxl, sll), a)
    b = np.where(clip, 0, b)
    return a, b


def asym_err(st, a, b):
    """Closed-form weighted error of x ~ a L - b from stats st = (sw, sl, sll, sx, sxl, sxx)."""
    sw, sl, sll, sx, sxl, sxx = st
    return sxx + a * (a * sll - 2 * sxl) + b * (b * sw + 2 * sx) - 2 * a * b * sl


def asym_stats(x, w, L, base):
    """(sw, sl, sll, sx, sxl, sxx) per sub-block; base = (sw, sx, sxx) = asym_base(x, w)."""
    sw, sx, sxx = base
    return sw, sum0(L, w), dot0(L, L, w), sx, dot0(L, x, w), sxx


def asym_base(x, w):
    """The code-independent sums (sw, sx, sxx) per sub-block."""
    sw = np.full(x.shape[1:], x.shape[0], np.float32) if w is None else w.sum(axis=0)
    return sw, sum0(x, w), dot0(x, x, w)


def asym_subblock_fit(x, w, nmax, factors, base, n_lloyd=None, free_min=False):
    """Best float (a, b) per sub-block, x ~ a L - b, b >= 0.  x: (n, ...).  Returns a, b (...) float32.

    `factors` are (value, offset) pairs: codes L = rint((x - min) / range * value + offset),
    min = min(sub-block min, 0), as llama.cpp's make_qkx2_quants scans `value`
    alone; the offset shifts every rounding threshold and finds markedly better
    fits.  Each candidate gets the weighted least-squares (a, b); the best is
    refined by Lloyd steps.  free_min: the min may be positive (b < 0), for
    formats that store any offset.
    """
    n_lloyd = N_LLOYD if n_lloyd is None else n_lloyd
    xmin = x.min(axis=0) if free_min else np.minimum(x.min(axis=0), 0)
    inv = safe_div(np.float32(1), x.max(axis=0) - xmin).astype(np.float32)
    xs = (x - xmin) * inv  # in [0, 1]
    best_err = np.full(xmin.shape, np.inf, np.float32)
    best_a = np.zeros(xmin.shape, np.float32)
    best_b = np.zeros(xmin.shape, np.float32)
    for f, off in factors:
        L = rint_clip(xs * np.float32(f) + np.float32(off), 0, nmax)
        best_err, best_a, best_b = _asym_keep(x, w, L, base, best_err, best_a, best_b, free_min)
    for _ in range(n_lloyd):
        L = rint_clip((x + best_b) * safe_div(np.float32(1), best_a).astype(np.float32), 0, nmax)
        best_err, best_a, best_b = _asym_keep(x, w, L, base, best_err, best_a, best_b, free_min)
    return best_a, best_b


def _asym_keep(x, w, L, base, best_err, best_a, best_b, free_min=False):
    st = asym_stats(x, w, L, base)
    a, b = _ls_scale_min(*st[:5], free_min=free_min)
    err = asym_err(st, a, b)
    better = err < best_err
    return np.where(better, err, best_err), np.where(better, a, best_a), np.where(better, b, best_b)


def asym_choose(st, scmax, inits):
    """Pick fp16 (d, dmin) (B,) and integer (sc, m) (B, S) in [0, scmax] on stats st (each (B, S) f64).

    Given (d, dmin): for each sub-block, sc is tried at the neighbours of the
    continuous optimum a*/d, and for each sc the best m is the nearest integer
    to the optimal min b(sc)/dmin.  Given (sc, m): (d, dmin) is the 2x2
    weighted least-squares refit over the super-block.
    """
    sw, sl, sll, sx, sxl, sxx = st
    D = sw * sll - sl * sl
    a_star = np.where(D > 0, safe_div(sw * sxl - sl * sx, D), safe_div(sxl, sll))
    B = sw.shape[0]
    best = (np.full(B, np.inf), np.zeros(B, np.float32), np.zeros(B, np.float32),
            np.zeros(sw.shape, F64), np.zeros(sw.shape, F64))
    for d0, m0 in inits:
        d, dm = f16(d0), f16(m0)
        for _ in range(N_ALT):
            sc, m, err = _pick_sc_m(st, a_star, d, dm, scmax)
            tot = err.sum(-1)
            better = tot < best[0]
            best = (np.where(better, tot, best[0]), np.where(better, d, best[1]), np.where(better, dm, best[2]),
                    np.where(better[:, None], sc, best[3]), np.where(better[:, None], m, best[4]))
            d, dm = _refit_d_dmin(st, sc, m)
    return best[1:]


def _pick_sc_m(st, a_star, d, dm, scmax):
    sw, sl, sll, sx, sxl, sxx = st
    d64, dm64 = d[:, None].astype(F64), dm[:, None].astype(F64)
    center = np.rint(safe_div(a_star, d64))
    inv_sw = safe_div(1.0, sw)
    inv_dm = safe_div(1.0, dm64)
    best_err = best_sc = best_m = None
    for k in SC_OFFSETS:
        sc = np.clip(center + k, 0, scmax)
        a = d64 * sc
        m = np.clip(np.rint((a * sl - sx) * inv_sw * inv_dm), 0, scmax)
        err = asym_err(st, a, dm64 * m)
        if best_err is None:
            best_err, best_sc, best_m = err, sc, m
            continue
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_sc = np.where(better, sc, best_sc)
        best_m = np.where(better, m, best_m)
    return best_sc, best_m, best_err


def _refit_d_dmin(st, sc, m):
    """2x2 weighted LS for x ~ d (sc L) - dmin m over each super-block; dmin >= 0."""
    sw, sl, sll, sx, sxl, sxx = st
    uu = (sc * sc * sll).sum(-1)
    uv = (sc * m * sl).sum(-1)
    vv = (m * m * sw).sum(-1)
    xu = (sc * sxl).sum(-1)
    xv = (m * sx).sum(-1)
    D = uu * vv - uv * uv
    d = safe_div(xu * vv - xv * uv, D)
    dm = safe_div(uv * xu - uu * xv, D)
    bad = (D <= 0) | (dm < 0)
    d = np.where(bad, safe_div(xu, uu), d)
    dm = np.where(bad, 0, dm)
    return f16(d), f16(dm)


def _asym_codes(x, a, b, nmax):
    return rint_clip((x + b) * safe_div(np.float32(1), a).astype(np.float32), 0, nmax)


def asym_quantize(x, w, nmax, scmax, factors):
    """Full asymmetric search.  x: (n, B, S) float32 element-major, w: same or None.

    Returns d, dmin (B,) fp16-exact float32, sc, m (B, S) int32 in [0, scmax], L (n, B, S) uint8 in [0, nmax].
    """
    base = asym_base(x, w)
    a, b = asym_subblock_fit(x, w, nmax, factors, base)
    base64 = tuple(v.astype(F64) for v in base)
    amax, bmax = a.max(axis=1) / scmax, b.max(axis=1) / scmax
    inits = [(amax * t, bmax * u) for t, u in ASYM_INITS]
    d = dm = None
    for _ in range(N_OUTER + 1):
        L = _asym_codes(x, a, b, nmax)
        sw, sl, sll, sx, sxl, sxx = asym_stats(x, w, L, base)
        st = (base64[0], sl.astype(F64), sll.astype(F64), base64[1], sxl.astype(F64), base64[2])
        d, dm, sc, m = asym_choose(st, scmax, inits if d is None else inits + [(d, dm)])
        a, b = (d[:, None] * sc).astype(np.float32), (dm[:, None] * m).astype(np.float32)
    L = _asym_codes(x, a, b, nmax)
    return d, dm, sc.astype(np.int32), m.astype(np.int32), L.astype(np.uint8)
