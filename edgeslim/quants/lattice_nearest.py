"""Exact importance-weighted nearest grid point of a lattice type: branch and bound over a trie of the grid.

For one slot of D weights (magnitudes a, or the signed weights for IQ1), importances w and a
scale e, the error of grid point g is a sum over coordinates,

    err(g) = sum_k w_k (a_k - e (v[g_k] + shift))^2 = sum_k c[k, g_k]

with v the type's L levels ({8, 25, 43} for IQ2, eight odd or even values for IQ3, {-1, 0, 1}
for IQ1, whose points are shifted by shift = +-delta).  The grid, kept as a trie (depth k =
coordinate k, a node's children = the levels that follow its prefix somewhere on the grid):

    root ─┬─ v0 ─┬─ v0 ─ ...          child[node, j]: the node after level j, or -1
          │      └─ v2 ─ ...          leaf[node]:     the grid index of a depth-D node
          └─ v1 ─ ...

is walked depth first, cheapest level first, and a branch is cut as soon as its cost so far
plus the cheapest level of every coordinate still open reaches the best leaf found.  That bound
never overestimates, so the walk returns the exact optimum over the whole grid (what a brute
force over all P points returns; tests/test_quants_zoo.py checks it) while a slot typically
visits a few dozen nodes instead of P = 256 ... 4096 points.

Parity (IQ2_XXS, IQ2_XS, IQ3_XXS keep an even number of minus signs per 8 weights): a slot that
must carry its group's one flipped sign (`need`) takes exactly one coordinate at the flipped
cost w_k (a_k + e v)^2; its bound adds the cheapest flip surcharge still open.

Hand-written: no library searches a fixed irregular point set under a per-query diagonal metric
(k-d trees and FAISS are unweighted); numba, a core dependency, compiles the walk (cache=True).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from numba import njit

INF = np.inf


def build_trie(codes: np.ndarray, n_levels: int) -> SimpleNamespace:
    """codes (P, D) level indices of the grid points -> the trie the walk reads:

        child (nodes, L) int32   the node after level j (-1: none); node 0 is the root
        kid_ptr (nodes + 1,)     for a node of depth D - 1, its leaves are kid_lev / kid_pt[kid_ptr[n]:kid_ptr[n + 1]]:
        kid_lev, kid_pt (P,)     the last coordinate's level and the grid index (a leaf list, as the last
                                 level is sparse: 1-3 children per node for IQ3's 8 levels)
    """
    child = [[-1] * n_levels]
    kids: dict[int, list] = {}
    for p, row in enumerate(codes.tolist()):
        node = 0
        for j in row[:-1]:
            if child[node][j] < 0:
                child[node][j] = len(child)
                child.append([-1] * n_levels)
            node = child[node][j]
        kids.setdefault(node, []).append((row[-1], p))
    ptr = np.zeros(len(child) + 1, np.int32)
    lev, pt = [], []
    for n in range(len(child)):
        for j, p in sorted(kids.get(n, ())):
            lev.append(j)
            pt.append(p)
        ptr[n + 1] = len(lev)
    return SimpleNamespace(child=np.array(child, np.int32), kid_ptr=ptr, kid_lev=np.array(lev, np.int32),
                           kid_pt=np.array(pt, np.int32))


@njit(cache=True, nogil=True)
def _order_row(c, k, o):
    """o[k] = the ascending order of c[k, :].  The costs are convex in the level value and the levels
    sorted, so the order runs outwards from the cheapest level (2-D indexing: row views would cost
    reference counting per call)."""
    L = c.shape[1]
    m = 0
    for j in range(1, L):
        if c[k, j] < c[k, m]:
            m = j
    o[k, 0] = m
    lo, hi = m - 1, m + 1
    for i in range(1, L):
        if hi >= L or (lo >= 0 and c[k, lo] <= c[k, hi]):
            o[k, i] = lo
            lo -= 1
        else:
            o[k, i] = hi
            hi += 1


@njit(cache=True, nogil=True)
def _costs(A, W, s, e, levels, shift, flips, c, cf, order, orderf, lb, flb):
    """Slot s's per-coordinate cost tables (unflipped c; flipped cf when `flips`), their ascending orders
    and the suffix lower bounds lb[k] = sum_{i >= k} min c[i], flb[k] = min_{i >= k} (min cf[i] - min c[i])."""
    D, L = c.shape
    for k in range(D):
        a, w = np.float64(A[s, k]), np.float64(W[s, k])
        for j in range(L):
            v = e * (levels[j] + shift)
            d0, d1 = a - v, a + v
            c[k, j] = w * d0 * d0
            cf[k, j] = w * d1 * d1
        _order_row(c, k, order)
        if flips:
            _order_row(cf, k, orderf)
    lb[D] = 0.0
    flb[D] = INF
    for k in range(D - 1, -1, -1):
        mc = c[k, order[k, 0]]
        lb[k] = lb[k + 1] + mc
        flb[k] = min(flb[k + 1], cf[k, orderf[k, 0]] - mc) if flips else INF


@njit(cache=True, nogil=True)
def _walk(c, cf, order, orderf, lb, flb, need, child, kid_ptr, kid_lev, kid_pt, best, bg, bpos, node, part, flip, it):
    """Depth-first branch and bound (module doc) from the bound `best` (point bg, flip bpos): best error,
    grid index, flipped coordinate (-1: none).  node, part, flip, it (D,): the stack; the last
    coordinate is settled inline from each depth D - 1 node's leaf list."""
    D, L = c.shape
    last = D - 1
    nopt = 2 * L if need else L
    depth = 0
    node[0], part[0], flip[0], it[0] = 0, 0.0, -1, 0
    while depth >= 0:
        o = it[depth]
        if o >= nopt:
            depth -= 1
            continue
        it[depth] = o + 1
        if o < L:
            j = order[depth, o]
            p = part[depth] + c[depth, j]
            f = flip[depth]
        elif flip[depth] >= 0:  # the one flip is already taken above
            it[depth] = nopt
            continue
        else:
            j = orderf[depth, o - L]
            p = part[depth] + cf[depth, j]
            f = depth
        ch = child[node[depth], j]
        if ch < 0:
            continue
        bound = p + lb[depth + 1]
        if need and f < 0:
            bound += flb[depth + 1]
        if bound >= best:  # every later option of this kind costs at least as much
            it[depth] = L if o < L else nopt
            continue
        if depth + 1 < last:
            depth += 1
            node[depth], part[depth], flip[depth], it[depth] = ch, p, f, 0
            continue
        flip_last = need and f < 0  # the flip is still owed: the last coordinate takes it
        tab = cf if flip_last else c
        for i in range(kid_ptr[ch], kid_ptr[ch + 1]):
            q = p + tab[last, kid_lev[i]]
            if q < best:
                best, bg, bpos = q, kid_pt[i], (last if flip_last else f)
    return best, bg, bpos


@njit(cache=True, nogil=True)
def _point_cost(c, cf, codes, g, need):
    """Error of grid point g (and its cheapest flip when `need`): cost, flipped coordinate."""
    D = c.shape[0]
    cost, extra, fpos = 0.0, INF, -1
    for k in range(D):
        j = codes[g, k]
        cost += c[k, j]
        if need and cf[k, j] - c[k, j] < extra:
            extra, fpos = cf[k, j] - c[k, j], k
    return (cost + extra, fpos) if need else (cost, -1)


@njit(cache=True, nogil=True)
def nearest_points(A, W, E, need, shift, levels, codes, child, kid_ptr, kid_lev, kid_pt, warm,
                   out_g, out_err, out_m1, out_m2, out_flip):
    """For every slot s: the grid point nearest to A[s] at scale E[s] under the weights W[s] (module doc).

    A, W (n, D) float32; E (n,) float32; need (n,) bool: the slot carries one flipped sign; shift: added
    to every level; levels (L,) float32; codes (P, D) level index of each grid coordinate; child ...
    kid_pt: build_trie; warm (n,) a grid index to start the bound from (a previous answer), or -1.
    Writes out_g (n,) grid index, out_err (n,) float64 weighted error, out_m1 = sum w a v s,
    out_m2 = sum w v^2 (v the point's values, s = -1 at the flipped coordinate) and out_flip (n,) the
    flipped coordinate or -1."""
    n, D = A.shape
    L = levels.shape[0]
    flips = False
    for s in range(n):
        flips = flips or need[s]
    c, cf = np.empty((D, L)), np.empty((D, L))
    order, orderf = np.empty((D, L), np.int64), np.empty((D, L), np.int64)
    lb, flb = np.empty(D + 1), np.empty(D + 1)
    node, part, flip, it = np.empty(D, np.int64), np.empty(D), np.empty(D, np.int64), np.empty(D, np.int64)
    for s in range(n):
        _costs(A, W, s, np.float64(E[s]), levels, shift, flips, c, cf, order, orderf, lb, flb)
        best, bg, bpos = INF, -1, -1
        if warm[s] >= 0:
            bg = warm[s]
            best, bpos = _point_cost(c, cf, codes, bg, need[s])
        err, g, fpos = _walk(c, cf, order, orderf, lb, flb, need[s], child, kid_ptr, kid_lev, kid_pt,
                             best, bg, bpos, node, part, flip, it)
        m1 = 0.0
        m2 = 0.0
        for k in range(D):
            v = levels[codes[g, k]] + shift
            t = W[s, k] * v
            m1 += -t * A[s, k] if k == fpos else t * A[s, k]
            m2 += t * v
        out_g[s], out_err[s], out_m1[s], out_m2[s], out_flip[s] = g, err, m1, m2, fpos


class Slots:
    """The slots of a batch and their nearest grid points at any per-slot scale (the type's sign rules).

    spec: a lattice.Lattice; a, w (..., D): magnitudes (signed weights for IQ1) and importances; neg
    (...,) bool: the weights' own minus signs (parity types: which groups of 8 are odd).  Each call
    starts every slot's bound from its previous answer, which spares most of the walk when the
    scales move little between calls.
    """

    def __init__(self, spec, a: np.ndarray, w: np.ndarray, neg: np.ndarray):
        D = spec.dim
        self.spec, self.trie = spec, spec.trie
        self.A = np.ascontiguousarray(a, np.float32).reshape(-1, D)  # (Ns, D)
        self.W = np.ascontiguousarray(np.broadcast_to(w, a.shape), np.float32).reshape(-1, D)
        self.odd = (neg.reshape(-1, 8).sum(1) % 2).astype(bool) if spec.parity else None  # (Ng,)
        self._warm: dict = {}

    def _run(self, key, rows, e, need, shift):
        """The kernel on the slots `rows` (None: all): g, err, m1, m2, flip (module doc)."""
        warm = self._warm.setdefault(key, np.full(len(self.A), -1, np.int32))
        A, W, wr = (self.A, self.W, warm) if rows is None else (self.A[rows], self.W[rows], warm[rows])
        n = len(A)
        g, flip = np.empty(n, np.int32), np.empty(n, np.int8)
        err, m1, m2 = np.empty(n), np.empty(n), np.empty(n)
        t = self.trie
        need = np.zeros(n, bool) if need is None else np.ascontiguousarray(need)
        nearest_points(A, W, np.ascontiguousarray(e, np.float32), need, float(shift), t.levels, t.codes,
                       t.child, t.kid_ptr, t.kid_lev, t.kid_pt, wr, g, err, m1, m2, flip)
        if rows is None:
            warm[:] = g
        else:
            warm[rows] = g
        return g, err, m1, m2, flip

    def assign(self, e: np.ndarray, rows: np.ndarray | None = None, half: np.ndarray | None = None):
        """Best grid point of every slot (or of the slots `rows`: whole sign groups, whole sub-blocks for
        IQ1_S) at per-slot scales e: search index g (IQ1: + P for the -delta half), m1 = sum w a v s,
        m2 = sum w v^2 at g, flip: the coordinate whose sign flips (-1: none).  half (per slot, IQ1_S):
        the delta sign fixed by the caller instead of chosen per sub-block."""
        spec = self.spec
        if spec.delta:
            return self._assign_delta(e, rows, half)
        if not spec.parity:
            g, _, m1, m2, flip = self._run("plain", rows, e, None, 0.0)
            return g, m1, m2, flip
        per_group = 8 // spec.dim
        slots = np.arange(len(self.A)) if rows is None else rows
        odd = self.odd[slots // per_group]
        if per_group == 1:  # a slot is a sign group: an odd one carries the flip
            g, _, m1, m2, flip = self._run("parity", rows, e, odd, 0.0)
            return g, m1, m2, flip
        return self._assign_pairs(e, rows, odd)

    def _assign_pairs(self, e, rows, odd):
        """4-wide slots under the parity rule: an odd group's flip goes to whichever of its two slots costs less."""
        g, err, m1, m2, flip = self._run("plain", rows, e, None, 0.0)
        k = np.nonzero(odd)[0]  # the request's slots in odd groups, in pairs
        if len(k):
            sub = k if rows is None else rows[k]
            gf, errf, m1f, m2f, flipf = self._run("flip", sub, e[k], np.ones(len(k), bool), 0.0)
            c, cf = err[k].reshape(-1, 2), errf.reshape(-1, 2)
            first = (cf[:, 0] + c[:, 1]) <= (c[:, 0] + cf[:, 1])  # flip in the pair's first slot
            fk = np.stack([first, ~first], axis=1).reshape(-1)
            g[k], m1[k], m2[k] = np.where(fk, gf, g[k]), np.where(fk, m1f, m1[k]), np.where(fk, m2f, m2[k])
            flip[k] = np.where(fk, flipf, -1)
        return g, m1, m2, flip

    def _assign_delta(self, e, rows, half):
        """IQ1: the points shifted by +delta (search index g) or -delta (g + P), per slot (IQ1_M) or per
        sub-block (IQ1_S, or as `half` says)."""
        spec = self.spec
        P = len(spec.grid)
        if half is not None:
            out = [None] * 4
            for h, sgn in ((0, 1.0), (1, -1.0)):
                sel = np.nonzero(half == h)[0]
                if len(sel):
                    r = sel if rows is None else rows[sel]
                    g, _, m1, m2, flip = self._run(h, r, e[sel], None, sgn * spec.delta)
                    for i, v in enumerate((g + h * P, m1, m2, flip)):
                        if out[i] is None:
                            out[i] = np.empty(len(half), v.dtype)
                        out[i][sel] = v
            return tuple(out)
        res = [self._run(h, rows, e, None, sgn * spec.delta) for h, sgn in ((0, 1.0), (1, -1.0))]
        e0, e1 = res[0][1], res[1][1]
        if spec.shared_delta:
            per_sub = spec.sub // spec.dim
            neg_half = np.repeat(e1.reshape(-1, per_sub).sum(1) < e0.reshape(-1, per_sub).sum(1), per_sub)
        else:
            neg_half = e1 < e0
        g = np.where(neg_half, res[1][0] + P, res[0][0])
        m1, m2 = np.where(neg_half, res[1][2], res[0][2]), np.where(neg_half, res[1][3], res[0][3])
        return g, m1, m2, np.full(len(g), -1, np.int8)
