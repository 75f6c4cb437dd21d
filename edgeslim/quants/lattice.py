"""The search shared by llama.cpp's lattice ("IQ") types: IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M.

A super-block of 256 weights has one fp16 scale d and S sub-blocks with a
4-bit sub-scale l; each sub-block is cut into slots of D = 8 (IQ2) or 4 (IQ3)
weights, and every slot is one point of the type's grid (its magnitudes),
with a sign per weight:

    w[i] = d * mult * (2 l[i // sub] + 1) * GRID[idx[i // D], i % D] * sign[i]

(`mult` is 1/8 for IQ2, 1/4 for IQ3_XXS, 1 for IQ3_S; the type modules draw
their bytes).  The sign of each weight is free (IQ2_S, IQ3_S) or each group of
8 must hold an even number of minus signs (IQ2_XXS, IQ2_XS, IQ3_XXS store 7
sign bits; the 8th is implied).  Grid magnitudes are positive, so the best
sign is the weight's own; under the parity rule an odd group flips exactly one
weight, the one whose flip costs least: flipping weight i while it takes grid
value g_i costs 4 e w_i |x_i| g_i at slot scale e.  IQ1's grid holds signed
values {-1, 0, 1} shifted by +-delta: its points searched are
[GRID + delta; GRID - delta] against the signed weights, with no sign bits
(IQ1_S: one delta sign per sub-block, chosen per sub-block in every pass).

Nearest grid point, by brute force: with a = |x| and importances w over a
slot, the weighted error of grid point g at scale e is

    sum w a^2 - 2 e M1[g] + e^2 M2[g],   M1 = (w a) . G[g],   M2 = w . G[g]^2

so M1, M2 (slots, P) come from two small matrix products once per chunk, and
every later assignment at any per-slot scale is one fused pass
(e M2 - 2 M1) and an argmin.  The parity flip is folded into M1 (an odd
slot's M1 loses 2 min_i w_i a_i g_i over the cheapest weights to flip); for
4-wide slots the flip may fall in either slot of the group, so both versions
are kept and each odd group takes the better pair.  Exact (every grid point
is tried, with the importances), unlike a nearest-cell neighbour list.

Scales:
  1. per sub-block, candidate float scales (its largest |x| mapped around the
     grid's top value), each assignment refitted by weighted least squares
     (e = sum M1 / sum M2), the best refined by Lloyd steps;
  2. per super-block, fp16 d and the odd multipliers q = 2l + 1 are chosen on
     the sub-blocks' statistics (sum w a^2, sum M1, sum M2) as the k-quants'
     sym_choose does (nearest q per sub-block, least-squares d, alternated);
  3. every slot is re-assigned at its final scale and step 2 repeats once
     from there; per super-block the lower weighted error is kept.
Nearly constant sub-blocks also try the grid's smallest constant point.

Against llama.cpp's quantizers (which round each coordinate to a level and
look the nearest grid point up in an unweighted neighbour list, with levels
1, 3, 5 where the grid has 8, 25, 43) this finds 5-25% lower importance-
weighted error (tests/test_quants_vs_llamacpp.py).  Throughput: see the type
modules.  Hand-written: no field library quantizes to ggml's lattice formats
(gguf-py only dequantizes them).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..tables import QK_K
from ._common import f16, safe_div
from .search import sym_choose

F64 = np.float64
T_CANDIDATES = (0.85, 1.0, 1.2)  # sub-block max |x| -> grid's top value * t
N_LLOYD = 1
N_SUPER = 2  # rounds of (fp16 d and sub-scales, re-assignment)
N_FLIP = 3  # cheapest weights considered for the parity flip of an 8-wide slot
FLAT_RATIO = 1.5  # a sub-block whose max |x| is below 1.5x its mean |x| also tries the flat candidate
CHUNK_ELEMS = 1 << 20  # slots * grid points per chunk: the (slots, P) cost tables stay a few MB


def gguf_grid(cls) -> np.ndarray:
    """gguf-py's grid for a quant class (built from its hex string): (P, D) int8 values."""
    cls.init_grid()
    return np.asarray(cls.grid, np.float32).reshape(cls.grid_shape).astype(np.int8)


@dataclass(frozen=True)
class Lattice:
    """What the search needs to know of one lattice type."""

    grid: np.ndarray  # (P, D) int8 magnitudes (signed values when `signed`)
    sub: int  # weights per sub-scale
    mult: float  # sub-block scale = d * mult * (2 l + 1)
    parity: bool  # even number of minus signs per group of 8
    lmax: int = 15
    signed: bool = False  # the grid holds the signs (IQ1): no sign bits
    delta: float = 0.0  # IQ1: every grid point is shifted by +delta or -delta (the index's top half: -delta)
    shared_delta: bool = False  # IQ1_S: one delta sign per sub-block rather than per group

    @property
    def dim(self) -> int:
        return self.grid.shape[1]

    @property
    def values(self) -> np.ndarray:
        """The points searched, float32 (P', D): the grid, or [grid + delta; grid - delta]."""
        g = self.grid.astype(np.float32)
        return np.concatenate([g + np.float32(self.delta), g - np.float32(self.delta)]) if self.delta else g

    def scale(self, d: np.ndarray, l: np.ndarray) -> np.ndarray:
        """Sub-block scale as the decoders compute it: (d * (0.5 + l)) * 2 mult, float32."""
        return (d * (np.float32(0.5) + np.asarray(l, np.float32))).astype(np.float32) * np.float32(2 * self.mult)

    @property
    def flat_level(self) -> float:
        """The smallest value v with (v, ..., v) on the grid (for nearly constant sub-blocks)."""
        g = self.grid
        return float(g[(g == g[:, :1]).all(1), 0].min())


@dataclass
class Codes:
    """A search result for B super-blocks: what the type modules pack."""

    d: np.ndarray  # (B,) float32, fp16-exact
    l: np.ndarray  # (B, S) int, sub-scales in [0, lmax]
    idx: np.ndarray  # (B, 256 // D) int, grid indices
    neg: np.ndarray  # (B, 256) bool, minus signs (even count per 8 under the parity rule)


def search(spec: Lattice, x: np.ndarray, w: np.ndarray | None) -> Codes:
    """(B, 256) float32 weights [, importances (B, 256)] -> Codes (see module doc)."""
    B = x.shape[0]
    P, D = spec.values.shape
    step = max(1, CHUNK_ELEMS // (P * (QK_K // D)))
    parts = [_search_chunk(spec, x[b:b + step], None if w is None else w[b:b + step]) for b in range(0, B, step)]
    return Codes(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("d", "l", "idx", "neg")))


class _Tables:
    """Per-chunk cost tables: M1 / M2 (slots, P) and, for 4-wide parity slots, M1 with a flip."""

    def __init__(self, spec: Lattice, a: np.ndarray, w: np.ndarray, neg: np.ndarray):
        G = spec.values  # (P, D) float32
        D = spec.dim
        self.spec, self.G = spec, G
        same_w = w.ndim == 2 and w.strides[0] == 0  # one weight row for every row (vector GPTQ's metric)
        self.A, self.W = a.reshape(-1, D), w.reshape(-1, D)  # (Ns, D)
        self.WA = self.W * self.A
        # c_einsum, not BLAS: for an inner dimension of 4-8 it is several times faster (and single-threaded);
        # with the grid transposed (contiguous over P) its inner loop vectorizes
        GT = np.ascontiguousarray(G.T)  # (D, P)
        self.M1 = np.einsum("nd,dp->np", self.WA, GT)  # (Ns, P)
        if same_w:  # the row's slots' M2, repeated
            self.M2 = np.tile(np.einsum("nd,dp->np", w[0].reshape(-1, D), GT * GT), (w.shape[0], 1))
        else:
            self.M2 = np.einsum("nd,dp->np", self.W, GT * GT)
        self.M1f = self.odd = None
        if spec.parity:
            self.odd = (neg.reshape(-1, 8).sum(1) % 2).astype(bool)  # (Ng,)
            self.flip_cand = np.argsort(self.WA, axis=1)[:, :N_FLIP]  # (Ns, N_FLIP) cheapest weights to flip
            if D == 8:  # a group is a slot: fold the flip into the odd slots' M1
                rows = np.nonzero(self.odd)[0]
                self.M1[rows] -= 2 * self._penalty(rows)
            else:  # 4-wide slots: the flip may go to either slot of an odd group; keep both versions there
                self.odd_slots = np.nonzero(np.repeat(self.odd, 8 // D))[0]
                self.odd_pos = np.full(len(self.WA), -1, np.intp)
                self.odd_pos[self.odd_slots] = np.arange(len(self.odd_slots))
                self.M1f = self.M1[self.odd_slots] - 2 * self._penalty(self.odd_slots)  # (n_odd, P)
                self.M2f = self.M2[self.odd_slots]
        self.N1 = -2 * self.M1
        self.N1f = None if self.M1f is None else -2 * self.M1f
        self.C = np.empty_like(self.M1)

    def _penalty(self, rows: np.ndarray) -> np.ndarray:
        """min over the flip candidates c of w_c a_c G[g, c], for the given slots: (len(rows), P)."""
        GT = self.G.T  # (D, P)
        pen = None
        for k in range(self.flip_cand.shape[1]):
            c = self.flip_cand[rows, k]
            v = GT[c]
            v *= self.WA[rows, c][:, None]
            pen = v if pen is None else np.minimum(pen, v, out=pen)
        return pen

    def _best(self, M1, N1, e, rows, M2=None):
        """argmin_g e M2 - 2 M1 (N1 = -2 M1 precomputed) over the rows `rows` of M1 (None: all): g, M1 and M2 at g.
        M2 defaults to the slots' own (rows of self.M2)."""
        if M2 is None:
            M2 = self.M2 if rows is None else self.M2[rows]
        M1, N1 = (M1, N1) if rows is None else (M1[rows], N1[rows])
        C = self.C[:len(M2)]
        np.multiply(M2, e[:, None], out=C)
        C += N1
        g = C.argmin(axis=1) if not self.spec.shared_delta else self._shared_half(C)
        r = np.arange(len(g))
        return g, M1[r, g], M2[r, g]

    def _shared_half(self, C: np.ndarray) -> np.ndarray:
        """IQ1_S: best point per slot within the half (delta sign) that is best for the whole sub-block."""
        n, P = C.shape
        h = C.reshape(n, 2, P // 2)
        g2 = h.argmin(axis=2)  # (n, 2)
        c2 = np.take_along_axis(h, g2[:, :, None], axis=2)[:, :, 0]  # (n, 2), slot scale >= 0 factored out
        per_sub = self.spec.sub // self.spec.dim
        half = (c2.reshape(-1, per_sub, 2).sum(1)[:, 1] < c2.reshape(-1, per_sub, 2).sum(1)[:, 0])
        half = np.repeat(half, per_sub)
        return g2[np.arange(n), half.astype(np.intp)] + half * (P // 2)

    def assign(self, e: np.ndarray, rows: np.ndarray | None = None):
        """Best grid point of every slot (or of the slots `rows`, whole sign groups) at per-slot scale e:
        g, M1 and M2 at g, flip (bool: the slot carries its group's parity flip)."""
        g, m1, m2 = self._best(self.M1, self.N1, e, rows)
        if self.odd is None:
            return g, m1, m2, np.zeros(len(g), bool)
        per_group = 8 // self.spec.dim
        odd = np.repeat(self.odd, per_group) if rows is None else self.odd[rows // per_group]
        if self.M1f is None:
            return g, m1, m2, odd
        k = np.nonzero(odd)[0]  # the request's slots in odd groups, in pairs
        slots = k if rows is None else rows[k]
        ek = e[k]
        if rows is None:  # every odd slot, in order: the tables as they are
            gf, m1f, m2f = self._best(self.M1f, self.N1f, ek, None, self.M2f)
        else:
            gf, m1f, m2f = self._best(self.M1f, self.N1f, ek, self.odd_pos[slots], self.M2[slots])
        c = (ek * (ek * m2[k] - 2 * m1[k])).reshape(-1, 2)
        cf = (ek * (ek * m2f - 2 * m1f)).reshape(-1, 2)
        first = (cf[:, 0] + c[:, 1]) <= (c[:, 0] + cf[:, 1])  # flip in the pair's first slot
        fk = np.stack([first, ~first], axis=1).reshape(-1)
        flip = np.zeros(len(g), bool)
        flip[k] = fk
        g[k], m1[k], m2[k] = np.where(fk, gf, g[k]), np.where(fk, m1f, m1[k]), np.where(fk, m2f, m2[k])
        return g, m1, m2, flip

    def flip_index(self, slots: np.ndarray, g: np.ndarray) -> np.ndarray:
        """For flipped slots (indices) at grid points g, the position (0..D-1) of the weight whose sign flips."""
        fc = self.flip_cand[slots]  # (n, N_FLIP)
        cost = self.WA[slots[:, None], fc] * self.G[g[:, None], fc]
        return fc[np.arange(len(slots)), cost.argmin(axis=1)]


def nearest(spec: Lattice, x: np.ndarray, w: np.ndarray, e: np.ndarray, half: np.ndarray | None = None):
    """Best grid points for one group of 8 weights per row at a given scale (vector GPTQ's rounding step).

    x, w: (n, 8) weights and their error weights; e: (n,) scales; half (n,) in {0, 1}: the
    delta sign fixed for the row's sub-block (IQ1_S only).  Returns idx (n, 8 // D) search
    indices, neg (n, 8) bool (parity rule applied), q (n, 8) float32: the decoded values.
    """
    return Rounder(spec, x, w).round(e, half)


class Rounder:
    """`nearest` for several scales on the same weights: the score tables are built once."""

    def __init__(self, spec: Lattice, x: np.ndarray, w: np.ndarray):
        self.spec, self.x = spec, x
        self.t = _Tables(spec, x if spec.signed else np.abs(x), w, x < 0)

    def round(self, e: np.ndarray, half: np.ndarray | None = None):
        """(idx, neg, q) at scales e (n,), as `nearest`."""
        spec, t, x = self.spec, self.t, self.x
        n, D = x.shape[0], spec.dim
        e = np.asarray(e, np.float32)
        if spec.shared_delta:
            P2 = t.M1.shape[1] // 2
            C = t.M2 * e[:, None] + t.N1  # (n, P)
            g = C.reshape(n, 2, P2)[np.arange(n), half].argmin(axis=1) + half * P2
            flip = np.zeros(n, bool)
        else:
            g, _, _, flip = t.assign(np.repeat(e, 8 // D))
        neg = (x < 0).reshape(-1, D)
        if spec.parity:
            rows = np.nonzero(flip)[0]
            if len(rows):
                neg[rows, t.flip_index(rows, g[rows])] ^= True
        vals = t.G[g].reshape(n, 8)
        if spec.signed:
            return g.reshape(n, -1), np.zeros((n, 8), bool), e[:, None] * vals
        sign = np.where(neg, np.float32(-1), np.float32(1)).reshape(n, 8)
        return g.reshape(n, -1), neg.reshape(n, 8), (e[:, None] * vals) * sign


def _sub_sums(v: np.ndarray, b: int, S: int) -> np.ndarray:
    return v.reshape(b, S, -1).sum(-1, dtype=F64)


def _search_chunk(spec: Lattice, x: np.ndarray, w: np.ndarray | None) -> Codes:
    b = x.shape[0]
    a = x if spec.signed else np.abs(x)
    neg = x < 0
    w = np.ones_like(x) if w is None else w
    t = _Tables(spec, a, w, neg)
    S = QK_K // spec.sub
    sxx = (w * a * a).reshape(b, S, -1).sum(-1, dtype=F64)  # (b, S)
    sxg, sgg, es = _float_scales(spec, t, a, w, sxx)
    return _codes(spec, t, _super_scales(spec, t, sxx, sxg, sgg, es), neg, b)


def _float_scales(spec: Lattice, t: _Tables, a, w, sxx):
    """Step 1: the best float scale of every sub-block: stats sum M1, sum M2 at its assignment, and the scale."""
    b, S = sxx.shape
    per_sub = spec.sub // spec.dim  # slots per sub-block
    amax = np.abs(a).reshape(b, S, -1).max(-1)  # (b, S)
    best = [np.full((b, S), np.inf), np.zeros((b, S)), np.zeros((b, S)), np.zeros((b, S))]  # err, e, sxg, sgg

    def trial(e, subs=None):
        rows = None if subs is None else (subs[:, None] * per_sub + np.arange(per_sub)).reshape(-1)
        _, m1, m2, _ = t.assign(np.repeat(e.astype(np.float32).reshape(-1), per_sub), rows)
        sxg, sgg = m1.reshape(-1, per_sub).sum(-1, dtype=F64), m2.reshape(-1, per_sub).sum(-1, dtype=F64)
        es = safe_div(sxg, sgg)
        full = [v.reshape(-1).copy() for v in best]
        at = slice(None) if subs is None else subs
        err = sxx.reshape(-1)[at] - es * sxg
        keep = err < full[0][at]
        for f, v in zip(full, (err, es, sxg, sgg)):
            f[at] = np.where(keep, v, f[at])
        best[:] = [f.reshape(b, S) for f in full]

    gmax = float(np.abs(spec.values).max())
    for k in range(len(T_CANDIDATES) + N_LLOYD):
        trial(amax / (gmax * T_CANDIDATES[k]) if k < len(T_CANDIDATES) else best[1])
    if spec.signed:
        return best[2], best[3], best[1]
    wa = (w * a).reshape(b, S, -1)
    mean = safe_div(wa.sum(-1), w.reshape(b, S, -1).sum(-1))
    flat = np.nonzero((amax <= FLAT_RATIO * mean).reshape(-1))[0]
    if len(flat):  # nearly constant sub-blocks: all on the grid's smallest constant point
        trial(mean.reshape(-1)[flat] / spec.flat_level, flat)
    return best[2], best[3], best[1]


def _super_scales(spec: Lattice, t: _Tables, sxx, sxg, sgg, es):
    """Steps 2 and 3: fp16 d and odd multipliers q = 2l + 1 per super-block, re-assign, once more."""
    b, S = sxx.shape
    per_sub = spec.sub // spec.dim
    qmax = 2 * spec.lmax + 1
    ext = es.max(axis=1)
    inits = [ext / qmax * u for u in (1.0, 0.9)]
    total = np.full(b, np.inf)
    out = None
    for _ in range(N_SUPER):
        dm, q = sym_choose(sxg, sgg, sxx, 1, qmax, inits, qround=_odd_round(qmax))
        e = (dm[:, None] * q).astype(np.float32)  # (b, S) sub-block scales
        g, m1, m2, flip = t.assign(np.repeat(e.reshape(-1), per_sub))
        sxg, sgg = _sub_sums(m1, b, S), _sub_sums(m2, b, S)
        err = (sxx - 2 * e * sxg + e.astype(F64) ** 2 * sgg).sum(1)
        keep = err < total
        cand = (dm, q, g, flip)
        out = cand if out is None else _select(keep, cand, out, b)
        total = np.where(keep, err, total)
        inits = inits + [out[0]]
    return out


def _select(keep, new, old, b):
    """Per super-block choice between two (dm, q, g, flip) results; g and flip are per slot."""
    dm = np.where(keep, new[0], old[0])
    q = np.where(keep[:, None], new[1], old[1])
    ks = np.repeat(keep, len(new[2]) // b)
    return dm, q, np.where(ks, new[2], old[2]), np.where(ks, new[3], old[3])


def _odd_round(qmax: int):
    """Nearest odd integer in [1, qmax] (the sub-scale multipliers 2l + 1)."""
    return lambda v: np.clip(2 * np.floor(v / 2) + 1, 1, qmax)


def _codes(spec: Lattice, t: _Tables, out, neg: np.ndarray, b: int) -> Codes:
    dm, q, g, flip = out
    neg = neg.copy().reshape(-1, spec.dim)  # (Ns, D)
    if spec.parity:
        rows = np.nonzero(flip)[0]
        if len(rows):
            pos = t.flip_index(rows, g[rows])
            neg[rows, pos] ^= True
    d = f16(dm / np.float32(spec.mult))
    l = ((q - 1) // 2).astype(np.int32)
    return Codes(d, l, g.reshape(b, -1), neg.reshape(b, QK_K))
