"""Exact importance-weighted nearest grid point of a lattice type: the error split into quarters, with bounds.

For one slot of D weights (magnitudes a, or the signed weights for IQ1), importances w and a
scale e, the error of grid point g is a sum over coordinates,

    err(g) = sum_k w_k (a_k - e (v[g_k] + shift))^2 = sum_k c[k, g_k]

with v the type's L levels ({8, 25, 43} for IQ2, eight values for IQ3, {-1, 0, 1} for IQ1,
whose points are shifted by shift = +-delta).  Cut the coordinates into four quarters of D/4
(2 for the 8-wide grids, 1 for IQ3's 4-wide ones); each quarter has M = L^(D/4) patterns (9 or
8) and a table s_q[u] = its part of the error (36 additions per slot in all).  A grid point is
its first half x = (u0, u1) and second half y = (u2, u3), and the grid is kept as, per first
half x, the list of its second halves (CSR: ptr, then yu / yv / pts per point):

    err(g) = s0[u0] + s1[u1] + s2[u2] + s3[u3]

    for u0:               skip if s0[u0] + min s1 + min s2 + min s3 >= best
      for u1:             skip if s0[u0] + s1[u1] + min s2 + min s3 >= best
        for (u2, u3, p) in the list of x = (u0, u1):   best = min(best, err)

Starting from a good point (the slot's previous answer, else the best point of the cheapest
first half) almost every branch is cut at once: on random normal weights with gamma(0.5)
importances a slot read 1-6 short lists, 12-30 points in all, instead of all P = 256 ... 2048
points.  The bounds never overestimate, so the answer is the exact optimum over the whole grid
(what a brute force returns; tests/test_quants_zoo.py checks it).  Throughput: the type modules.

Parity (IQ2_XXS, IQ2_XS, IQ3_XXS keep an even number of minus signs per 8 weights): a slot that
must carry its group's one flipped sign pays, per point, its cheapest flip,
min_k w_k ((a_k + e v)^2 - (a_k - e v)^2).  Each quarter also gets f_q[u] = s_q[u] with one of
its coordinates flipped, and a point costs the least of the four sums with exactly one f_q.  For
IQ3_XXS the two 4-wide slots of an odd group are searched both ways and the flip goes to the
slot where it costs less (the second slot's flipped search stops at the first one's extra).

Hand-written: no library searches a fixed irregular point set under a per-query diagonal metric
(k-d trees and FAISS are unweighted); numba, a core dependency, compiles it (cache=True).  The
helpers are inlined into the one compiled loop: called as functions, their array arguments cost
reference counting per slot (measured 2x slower).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from numba import njit

INF = np.inf


def split_grid(codes: np.ndarray, n_levels: int) -> SimpleNamespace:
    """codes (P, D) level indices of the grid points -> the index the search reads:

        M                      patterns per quarter, L^(D/4); a quarter's pattern is sum_k code_k L^(D/4 - 1 - k)
        ptr (M * M + 1,) int32 the points of first half x = u0 * M + u1: yu / yv / pts[ptr[x]:ptr[x + 1]]
        yu, yv, pts (P,) int32 their quarters 2 and 3, and grid index
    """
    P, D = codes.shape
    nq = D // 4
    M = n_levels ** nq
    place = n_levels ** np.arange(nq - 1, -1, -1)
    u = np.stack([(codes[:, q * nq:(q + 1) * nq] * place).sum(1) for q in range(4)])  # (4, P)
    hx = u[0] * M + u[1]
    order = np.lexsort((u[3], u[2], hx))
    ptr = np.zeros(M * M + 1, np.int64)
    np.add.at(ptr, hx + 1, 1)
    return SimpleNamespace(M=M, ptr=np.cumsum(ptr).astype(np.int32), yu=u[2][order].astype(np.int32),
                           yv=u[3][order].astype(np.int32), pts=order.astype(np.int32))


@njit(cache=True, nogil=True, inline="always")
def _quarters(A, W, s, e, levels, shift, flips, c, cf, sq, sqf, mq, mqf, aq):
    """Slot s: c[k, j] / cf[k, j] the error of coordinate k at level j (sign kept / flipped); sq[q, u] the
    error of quarter q at pattern u, sqf[q, u] with exactly one coordinate flipped (when flips); mq, mqf
    their minima, aq the pattern at mq.  (2-D indexing throughout: row views would cost reference counting per slot.)"""
    D, L = c.shape
    nq = D // 4
    for k in range(D):
        a, w = np.float64(A[s, k]), np.float64(W[s, k])
        for j in range(L):
            v = e * (levels[j] + shift)
            c[k, j] = w * (a - v) * (a - v)
            if flips:
                cf[k, j] = w * (a + v) * (a + v)
    for q in range(4):
        n = 1
        sq[q, 0], sqf[q, 0] = 0.0, INF
        for k in range(q * nq, (q + 1) * nq):  # expand in place, last pattern first
            for i in range(n - 1, -1, -1):
                o, of = sq[q, i], sqf[q, i]
                for j in range(L - 1, -1, -1):
                    sq[q, i * L + j] = o + c[k, j]
                    if flips:
                        sqf[q, i * L + j] = min(of + c[k, j], o + cf[k, j])
            n *= L
        m, mf, am = INF, INF, 0
        for u in range(n):
            if sq[q, u] < m:
                m, am = sq[q, u], u
            mf = min(mf, sqf[q, u])
        mq[q], mqf[q], aq[q] = m, mf, am


@njit(cache=True, nogil=True, inline="always")
def _point(c, cf, codes, g, need):
    """Error of grid point g (with its cheapest flip when `need`), and the flipped coordinate (-1: none)."""
    cost, extra, fpos = 0.0, INF, -1
    for k in range(c.shape[0]):
        j = codes[g, k]
        cost += c[k, j]
        if need and cf[k, j] - c[k, j] < extra:
            extra, fpos = cf[k, j] - c[k, j], k
    return (cost + extra, fpos) if need else (cost, -1)


@njit(cache=True, nogil=True, inline="always")
def _guess(sq, aq, M, ptr, yu, yv, pts):
    """A starting point without a previous answer: of the points whose first half is the cheapest pattern
    (aq: each quarter's cheapest), or else the cheapest first half on the grid, the best by the second half."""
    bx = aq[0] * M + aq[1]
    if ptr[bx + 1] == ptr[bx]:
        lo = INF
        for u in range(M):
            for v in range(M):
                x = u * M + v
                if ptr[x + 1] > ptr[x] and sq[0, u] + sq[1, v] < lo:
                    bx, lo = x, sq[0, u] + sq[1, v]
    bi = ptr[bx]
    for i in range(ptr[bx] + 1, ptr[bx + 1]):
        if sq[2, yu[i]] + sq[3, yv[i]] < sq[2, yu[bi]] + sq[3, yv[bi]]:
            bi = i
    return pts[bi]


@njit(cache=True, nogil=True, inline="always")
def _search(sq, sqf, mq, mqf, nd, M, ptr, yu, yv, pts, best, bg):
    """The bounded loops of the module doc from (best, bg): the best error and grid index."""
    yb = mq[2] + mq[3]  # no second half costs less
    ybf = min(mqf[2] + mq[3], mq[2] + mqf[3])  # ... with its one flip
    for u in range(M):
        a0, a0f = sq[0, u], sqf[0, u]
        lbu = min(a0f + mq[1] + yb, a0 + mqf[1] + yb, a0 + mq[1] + ybf) if nd else a0 + mq[1] + yb
        if lbu >= best:
            continue
        for v in range(M):
            x = u * M + v
            if ptr[x] == ptr[x + 1]:
                continue
            cx = a0 + sq[1, v]
            fx = min(a0f + sq[1, v], a0 + sqf[1, v]) if nd else INF
            if (min(fx + yb, cx + ybf) if nd else cx + yb) >= best:
                continue
            for i in range(ptr[x], ptr[x + 1]):
                cy = sq[2, yu[i]] + sq[3, yv[i]]
                if nd:
                    fy = min(sqf[2, yu[i]] + sq[3, yv[i]], sq[2, yu[i]] + sqf[3, yv[i]])
                    val = min(fx + cy, cx + fy)
                else:
                    val = cx + cy
                if val < best:
                    best, bg = val, pts[i]
    return best, bg


@njit(cache=True, nogil=True)
def nearest_points(A, W, E, mode, shift, levels, codes, M, ptr, yu, yv, pts, warm, out_i, out_f):
    """For every slot s: the grid point nearest to A[s] at scale E[s] under the weights W[s] (module doc).

    A, W (n, D) float32; E (n,) float32; mode (n,) int8: 0 the signs as they are, 1 with exactly one
    flipped sign, 2 both (the flipped answer in row 1), 3 the second slot of a pair (s - 1 in mode 2)
    that flips one sign between them: its flipped answer matters only if it costs less extra than the
    first slot's (so that search stops at that bound), and the flip goes to the slot where it costs
    less: row 0 of both slots then holds the pair's answer; shift: added to every level; levels (L,) float32;
    codes (P, D) level index of each grid coordinate; M ... pts: split_grid; warm (2, n) int32 grid
    indices to start the bounds from (previous answers; anything else: none).
    Writes out_i (2, n, 2) int32: grid index, flipped coordinate (-1: none); out_f (2, n, 3) float64:
    weighted error, m1 = sum w a v s, m2 = sum w v^2 (v the point's values, s = -1 at the flipped
    coordinate).  Row 0 answers the slot's mode (0 or 1; 0 for mode 2; the pair's for 3), row 1 the
    flipped case of modes 2 and 3."""
    n, D = A.shape
    L, P = levels.shape[0], codes.shape[0]
    flips = False
    for s in range(n):
        flips = flips or mode[s] > 0
    c, cf = np.empty((D, L)), np.empty((D, L))
    sq, sqf = np.empty((4, M)), np.empty((4, M))
    mq, mqf, aq = np.empty(4), np.empty(4), np.empty(4, np.int64)
    for s in range(n):
        _quarters(A, W, s, np.float64(E[s]), levels, shift, flips, c, cf, sq, sqf, mq, mqf, aq)
        for r in range(2 if mode[s] >= 2 else 1):
            nd = mode[s] == 1 or r == 1
            g = warm[r, s]
            if g < 0 or g >= P:
                g = _guess(sq, aq, M, ptr, yu, yv, pts)
            best = _point(c, cf, codes, g, nd)[0]
            if r == 1:  # the unflipped answer with its cheapest flip may start lower
                g1 = out_i[0, s, 0]
                b1 = _point(c, cf, codes, g1, True)[0]
                if b1 < best:
                    best, g = b1, g1
                if mode[s] == 3:  # the pair's other slot flips for this much extra
                    best = min(best, out_f[0, s, 0] + out_f[1, s - 1, 0] - out_f[0, s - 1, 0])
            best, g = _search(sq, sqf, mq, mqf, nd, M, ptr, yu, yv, pts, best, g)
            err, fpos = _point(c, cf, codes, g, nd)
            m1 = 0.0
            m2 = 0.0
            for k in range(D):
                v = levels[codes[g, k]] + shift
                t = W[s, k] * v
                m1 += -t * A[s, k] if k == fpos else t * A[s, k]
                m2 += t * v
            out_i[r, s, 0], out_i[r, s, 1] = g, fpos
            out_f[r, s, 0], out_f[r, s, 1], out_f[r, s, 2] = err, m1, m2
        if mode[s] == 3:  # the pair's flip where it costs less: that slot's row 0 takes its flipped answer
            f = s - 1 if out_f[1, s - 1, 0] + out_f[0, s, 0] <= out_f[0, s - 1, 0] + out_f[1, s, 0] else s
            out_i[0, f, 0], out_i[0, f, 1] = out_i[1, f, 0], out_i[1, f, 1]
            out_f[0, f, 0], out_f[0, f, 1], out_f[0, f, 2] = out_f[1, f, 0], out_f[1, f, 1], out_f[1, f, 2]


class Slots:
    """The slots of a batch and their nearest grid points at any per-slot scale (the type's sign rules).

    spec: a lattice.Lattice; a, w (..., D): magnitudes (signed weights for IQ1) and importances; neg
    (...,) bool: the weights' own minus signs (parity types: which groups of 8 are odd).  Each call
    starts every slot's bounds from its previous answers, which spares most of the lists when the
    scales move little between calls.
    """

    def __init__(self, spec, a: np.ndarray, w: np.ndarray, neg: np.ndarray):
        D = spec.dim
        self.spec, self.tab = spec, spec.index
        self.A = np.ascontiguousarray(a, np.float32).reshape(-1, D)  # (Ns, D)
        self.W = np.ascontiguousarray(np.broadcast_to(w, a.shape), np.float32).reshape(-1, D)
        self.odd = (neg.reshape(-1, 8).sum(1) % 2).astype(bool) if spec.parity else None  # (Ng,)
        self._warm: dict = {}

    def _run(self, key, rows, e, mode, shift):
        """The kernel on the slots `rows` (None: all): out_i (2, n, 2), out_f (2, n, 3) (see nearest_points)."""
        warm = self._warm.setdefault(key, np.full((2, len(self.A)), -1, np.int32))
        A, W, wr = (self.A, self.W, warm) if rows is None else (self.A[rows], self.W[rows], warm[:, rows])
        n = len(A)
        out_i, out_f = np.empty((2, n, 2), np.int32), np.empty((2, n, 3))
        mode = np.zeros(n, np.int8) if mode is None else np.ascontiguousarray(mode, np.int8)
        t = self.tab
        nearest_points(A, W, np.ascontiguousarray(e, np.float32), mode, float(shift), t.levels, t.codes,
                       t.M, t.ptr, t.yu, t.yv, t.pts, np.ascontiguousarray(wr), out_i, out_f)
        both = mode >= 2
        wr[0] = out_i[0, :, 0]
        wr[1, both] = out_i[1, both, 0]
        if rows is not None:
            warm[:, rows] = wr
        return out_i, out_f

    def assign(self, e: np.ndarray, rows: np.ndarray | None = None, half: np.ndarray | None = None):
        """Best grid point of every slot (or of the slots `rows`: whole sign groups, whole sub-blocks for
        IQ1_S) at per-slot scales e: search index g (IQ1: + P for the -delta half), m1 = sum w a v s,
        m2 = sum w v^2 at g (float64), flip: the coordinate whose sign flips (-1: none).  half (per slot,
        IQ1_S): the delta sign fixed by the caller instead of chosen per sub-block."""
        spec = self.spec
        if spec.delta:
            return self._assign_delta(e, rows, half)
        if not spec.parity:
            return _fields(*self._run("plain", rows, e, None, 0.0), 0)
        per_group = 8 // spec.dim
        slots = np.arange(len(self.A)) if rows is None else rows
        odd = self.odd[slots // per_group]
        if per_group == 1:  # a slot is a sign group: an odd one carries the flip
            return _fields(*self._run("parity", rows, e, odd, 0.0), 0)
        return self._assign_pairs(e, rows, odd)

    def _assign_pairs(self, e, rows, odd):
        """4-wide slots under the parity rule: an odd group's flip goes to whichever of its two slots costs less
        (decided in the kernel: mode 2 for a group's first slot, 3 for its second)."""
        mode = np.where(odd, 2, 0).astype(np.int8)
        mode[np.nonzero(odd)[0][1::2]] = 3  # the second slot of each odd pair
        return _fields(*self._run("pairs", rows, e, mode, 0.0), 0)

    def _assign_delta(self, e, rows, half):
        """IQ1: the points shifted by +delta (search index g) or -delta (g + P), per slot (IQ1_M) or per
        sub-block (IQ1_S, or as `half` says)."""
        spec = self.spec
        P = len(spec.grid)
        if half is not None:
            res = [np.empty(len(half), np.int64), np.empty(len(half)), np.empty(len(half)), np.full(len(half), -1)]
            for h, sgn in ((0, 1.0), (1, -1.0)):
                sel = np.nonzero(half == h)[0]
                if len(sel):
                    part = _fields(*self._run(h, sel if rows is None else rows[sel], e[sel], None, sgn * spec.delta), 0)
                    for out, v in zip(res, (part[0] + h * P, *part[1:])):
                        out[sel] = v
            return tuple(res)
        res = [self._run(h, rows, e, None, sgn * spec.delta) for h, sgn in ((0, 1.0), (1, -1.0))]
        e0, e1 = res[0][1][0, :, 0], res[1][1][0, :, 0]
        if spec.shared_delta:
            per_sub = spec.sub // spec.dim
            neg_half = np.repeat(e1.reshape(-1, per_sub).sum(1) < e0.reshape(-1, per_sub).sum(1), per_sub)
        else:
            neg_half = e1 < e0
        (g0, m10, m20, _), (g1, m11, m21, _) = (_fields(*r, 0) for r in res)
        return (np.where(neg_half, g1 + P, g0), np.where(neg_half, m11, m10), np.where(neg_half, m21, m20),
                np.full(len(g0), -1))


def _fields(out_i, out_f, r):
    """Row r of the kernel's outputs: g, m1, m2, flip."""
    return out_i[r, :, 0].astype(np.int64), out_f[r, :, 1], out_f[r, :, 2], out_i[r, :, 1]
