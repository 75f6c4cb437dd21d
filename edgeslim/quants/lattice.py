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

Nearest grid point: with a = |x| and importances w over a slot, the weighted
error of grid point g at scale e is

    sum w a^2 - 2 e M1[g] + e^2 M2[g],   M1 = (w a) . G[g] (signs applied),   M2 = w . G[g]^2

and its minimum over the whole grid is found exactly, but without trying
every point (`lattice_nearest.py`: the error is a sum over coordinates, so
per-quarter error tables bound whole families of points; a slot reads a few
short lists of the grid, starting from its previous answer).  An odd parity
group's flip goes to the weight where it costs least (exactly, over the
whole group); for 4-wide slots the flip may fall in either slot of the group
and each odd group takes the better pair.  Unlike llama.cpp's nearest-cell
neighbour lists this is the exact weighted optimum.

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
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from ..tables import QK_K
from ._common import f16, safe_div
from .search import sym_choose

if TYPE_CHECKING:  # lattice_nearest imports numba (0.7 s): only when a lattice type is searched
    from .lattice_nearest import Slots

F64 = np.float64
T_CANDIDATES = (0.85, 1.0, 1.2)  # sub-block max |x| -> grid's top value * t
N_LLOYD = 1
N_SUPER = 2  # rounds of (fp16 d and sub-scales, re-assignment)
FLAT_RATIO = 1.5  # a sub-block whose max |x| is below 1.5x its mean |x| also tries the flat candidate
CHUNK_BLOCKS = 256  # super-blocks per chunk: the per-chunk arrays stay in cache


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

    @cached_property
    def values(self) -> np.ndarray:
        """The points searched, float32 (P', D): the grid, or [grid + delta; grid - delta]."""
        g = self.grid.astype(np.float32)
        return np.concatenate([g + np.float32(self.delta), g - np.float32(self.delta)]) if self.delta else g

    def scale(self, d: np.ndarray, l: np.ndarray) -> np.ndarray:
        """Sub-block scale as the decoders compute it: (d * (0.5 + l)) * 2 mult, float32."""
        return (d * (np.float32(0.5) + np.asarray(l, np.float32))).astype(np.float32) * np.float32(2 * self.mult)

    @cached_property
    def index(self):
        """The grid as lattice_nearest searches it: levels (L,) float32 sorted values, codes (P, D) int32
        level index of every coordinate, and the lists by first half (lattice_nearest.split_grid)."""
        from .lattice_nearest import split_grid

        levels = np.unique(self.grid).astype(np.float32)
        codes = np.searchsorted(levels, self.grid.astype(np.float32)).astype(np.int32)
        t = split_grid(codes, len(levels))
        t.levels, t.codes = levels, codes
        return t

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


def _flip_signs(neg: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """neg (Ns, D) minus signs with the parity flips applied: flip (Ns,) the flipped coordinate or -1."""
    rows = np.nonzero(flip >= 0)[0]
    neg[rows, flip[rows]] ^= True
    return neg


def search(spec: Lattice, x: np.ndarray, w: np.ndarray | None) -> Codes:
    """(B, 256) float32 weights [, importances (B, 256)] -> Codes (see module doc)."""
    B, step = x.shape[0], CHUNK_BLOCKS
    parts = [_search_chunk(spec, x[b:b + step], None if w is None else w[b:b + step]) for b in range(0, B, step)]
    return Codes(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("d", "l", "idx", "neg")))


def nearest(spec: Lattice, x: np.ndarray, w: np.ndarray, e: np.ndarray, half: np.ndarray | None = None):
    """Best grid points for one group of 8 weights per row at a given scale (vector GPTQ's rounding step).

    x, w: (n, 8) weights and their error weights; e: (n,) scales; half (n,) in {0, 1}: the
    delta sign fixed for the row's sub-block (IQ1_S only).  Returns idx (n, 8 // D) search
    indices, neg (n, 8) bool (parity rule applied), q (n, 8) float32: the decoded values.
    """
    return Rounder(spec, x, w).round(e, half)


class Rounder:
    """`nearest` for several scales on the same weights (each call starts from the previous answers)."""

    def __init__(self, spec: Lattice, x: np.ndarray, w: np.ndarray):
        from .lattice_nearest import Slots

        self.spec, self.x = spec, x
        self.t = Slots(spec, x if spec.signed else np.abs(x), w, x < 0)

    def round(self, e: np.ndarray, half: np.ndarray | None = None):
        """(idx, neg, q) at scales e (n,), as `nearest`."""
        spec, x = self.spec, self.x
        n, per_row = x.shape[0], 8 // spec.dim
        e = np.asarray(e, np.float32)  # (n,) one scale per row
        g, _, _, flip = self.t.assign(np.repeat(e, per_row), half=None if half is None else np.repeat(half, per_row))
        vals = spec.values[g].reshape(n, 8)
        if spec.signed:
            return g.reshape(n, -1), np.zeros((n, 8), bool), e[:, None] * vals
        neg = _flip_signs((x < 0).reshape(-1, spec.dim), flip).reshape(n, 8)
        sign = np.where(neg, np.float32(-1), np.float32(1))
        return g.reshape(n, -1), neg, (e[:, None] * vals) * sign


def _sub_sums(v: np.ndarray, b: int, S: int) -> np.ndarray:
    return v.reshape(b, S, -1).sum(-1, dtype=F64)


def _search_chunk(spec: Lattice, x: np.ndarray, w: np.ndarray | None) -> Codes:
    b = x.shape[0]
    a = x if spec.signed else np.abs(x)
    neg = x < 0
    w = np.ones_like(x) if w is None else w
    from .lattice_nearest import Slots

    t = Slots(spec, a, w, neg)
    S = QK_K // spec.sub
    sxx = (w * a * a).reshape(b, S, -1).sum(-1, dtype=F64)  # (b, S)
    sxg, sgg, es = _float_scales(spec, t, a, w, sxx)
    return _codes(spec, t, _super_scales(spec, t, sxx, sxg, sgg, es), neg, b)


def _float_scales(spec: Lattice, t: Slots, a, w, sxx):
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


def _super_scales(spec: Lattice, t: Slots, sxx, sxg, sgg, es):
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


def _codes(spec: Lattice, t: Slots, out, neg: np.ndarray, b: int) -> Codes:
    dm, q, g, flip = out
    neg = _flip_signs(neg.copy().reshape(-1, spec.dim), flip)  # (Ns, D)
    d = f16(dm / np.float32(spec.mult))
    l = ((q - 1) // 2).astype(np.int32)
    return Codes(d, l, g.reshape(b, -1), neg.reshape(b, QK_K))
