"""Vector GPTQ into llama.cpp's lattice types (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M).

    gptq_lattice(w (rows, cols), U, dead, imp, qtype, block_cols=128) -> QTensor

A lattice type codes 8 consecutive weights of a row together (one point of an
8-dimensional grid, or two of a 4-dimensional one, with signs), so GPTQ's
"round one column, spread its error" becomes, per group of 8 columns B (as in
GPTVQ and QuIP#):

    Q_B   = nearest lattice points of W_B, row by row, at each row's sub-block scale
    Δ_B   = W_B - Q_B                                   # (rows, 8)
    E_B   = Δ_B U_BB^-1                                 # U: upper Cholesky factor of H^-1
    W_k  -= E_B U_Bk        for every later column k    # lazily, `block_cols` at a time

which is the block form of GPTQ's update: with H^-1 = U^T U, quantizing the
8 columns jointly costs ||E_B||^2 = Δ_B (U_BB^T U_BB)^-1 Δ_B^T of output
error, and E_B U_B,rest is the optimal correction of the columns not yet
quantized.  The nearest point is chosen under the diagonal of that 8x8
metric (`lattice.nearest`: exact weighted search over the whole grid, signs
from the weights, the parity flip where the type needs one).  The super-block
scale d and the 4-bit sub-scales are fixed when GPTQ reaches a super-block's
first column, by the type's own search (`lattice.search`, importance-weighted)
on the error-updated weights, as gptq.py does for the scalar types (IQ1_S's
per-sub-block delta sign is fixed with them).

Cost: per group of 8 columns one brute-force assignment (rows x grid points x
8 multiply-adds for the two score tables, one pass for the argmin), so about
grid-size / 8 times GPTQ's scalar rounding; the factorization of H is shared
with gptq.py (`PreparedHessian`).
"""
from __future__ import annotations

import numpy as np

from edgeslim.quants import QTensor, iq1, iq2, iq3
from edgeslim.quants.lattice import Lattice, Rounder, nearest, search
from edgeslim.tables import QK_K, quant_info

LATTICES = {**iq2.LATTICES, **iq3.LATTICES, **iq1.LATTICES}  # type -> (search spec, pack)
UNIT = 8  # columns quantized jointly (one sign group)


def gptq_lattice(w: np.ndarray, U: np.ndarray, dead: np.ndarray, imp: np.ndarray | None, qtype: str,
                 block_cols: int = 128, refine_subblocks: bool = False) -> QTensor:
    """Vector-GPTQ w (rows, cols) into a lattice type (see module doc).  U (cols, cols): upper Cholesky factor
    of the dampened H^-1; dead (cols,) bool: always-zero inputs; imp (cols,) or None: scale-search weights;
    refine_subblocks: re-choose each sub-block's 4-bit scale at its first column (d kept): 3-9% lower
    output error for about 1.8x the time (measured on tests/test_gptq.py's inputs and 1536 x 768)."""
    spec, pack = LATTICES[qtype]
    rows, cols = w.shape
    Wt = np.array(w.T, np.float32, order="C")  # (cols, rows)
    Wt[dead] = 0.0
    imp = None if imp is None or not np.any(imp) else (imp + np.float32(1e-4 * imp.mean())).astype(np.float32)
    st = _State(spec, rows, cols)
    bc = max(UNIT, block_cols - block_cols % UNIT)
    if QK_K % bc:
        bc = QK_K
    for i1 in range(0, cols, bc):
        i2 = min(i1 + bc, cols)
        W1, U1 = Wt[i1:i2], U[i1:i2, i1:i2]  # (bc, rows), (bc, bc)
        err = np.empty((i2 - i1, rows), np.float32)
        for u in range(0, i2 - i1, UNIT):
            j = i1 + u
            if j % QK_K == 0:
                st.fit_block(Wt[j:j + QK_K], None if imp is None else imp[j:j + QK_K])
            elif refine_subblocks and j % spec.sub == 0:
                st.refit_sub(W1[u:u + spec.sub], None if imp is None else imp[j:j + spec.sub], j)
            Ub = U1[u:u + UNIT, u:u + UNIT]
            Ui = np.linalg.inv(Ub.astype(np.float64))
            metric = (Ui * Ui).sum(1).astype(np.float32)  # diag of (Ub^T Ub)^-1: each column's error weight
            q = st.round(W1[u:u + UNIT], j, metric)
            err[u:u + UNIT] = (Ui.T @ (W1[u:u + UNIT] - q)).astype(np.float32)
            W1[u + UNIT:] -= U1[u:u + UNIT, u + UNIT:].T @ err[u:u + UNIT]
        Wt[i2:] -= U[i1:i2, i2:].T @ err  # the lazy update of every later column
    return st.pack(pack, qtype)


class _State:
    """Scales fixed per super-block, and the codes chosen so far."""

    def __init__(self, spec: Lattice, rows: int, cols: int):
        self.spec = spec
        nb, S = cols // QK_K, QK_K // spec.sub
        self.d = np.zeros((nb, rows), np.float32)
        self.l = np.zeros((nb, rows, S), np.int32)
        self.idx = np.zeros((cols // spec.dim, rows), np.int32)
        self.neg = np.zeros((cols, rows), bool)
        self.scales = None  # (rows, S) of the current super-block
        self.half = None  # (rows, S) IQ1_S: each sub-block's delta sign, fixed with its scales
        self._k = 0  # index of the next super-block

    def fit_block(self, xt: np.ndarray, imp: np.ndarray | None) -> None:
        """Scales of the super-block starting at this column, from the current weights xt (256, rows)."""
        x = np.ascontiguousarray(xt.T)
        c = search(self.spec, x, None if imp is None else np.broadcast_to(imp, x.shape))
        k = self._k
        self.d[k], self.l[k] = c.d, c.l
        self.scales = self.spec.scale(c.d[:, None], c.l)
        if self.spec.shared_delta:
            half = c.idx.reshape(len(c.d), self.l.shape[2], -1)[:, :, 0] >= len(self.spec.grid)
            self.half = half.astype(np.intp)
        self._k += 1

    def refit_sub(self, xt: np.ndarray, imp: np.ndarray | None, j: int) -> None:
        """Re-choose the sub-scale of the sub-block starting at column j, every row, from the current weights
        xt (sub, rows), d kept: l - 1, l or l + 1, whichever gives the lowest importance-weighted error."""
        spec, k, s = self.spec, self._k - 1, (j % QK_K) // self.spec.sub
        x = np.ascontiguousarray(xt.T)  # (rows, sub)
        rows, units = x.shape[0], x.shape[1] // UNIT
        xu = x.reshape(rows * units, UNIT)
        wu = np.ones_like(xu) if imp is None else np.tile(imp.reshape(units, UNIT), (rows, 1))
        half = None if self.half is None else np.repeat(self.half[:, s], units)
        r = Rounder(spec, xu, wu)  # score tables built once for the three scales
        l0 = self.l[k][:, s]
        best_err, best_l = None, l0
        for step in (0, -1, 1):
            cand = np.clip(l0 + step, 0, spec.lmax)
            _, _, q = r.round(np.repeat(spec.scale(self.d[k], cand), units), half)
            err = (wu * (xu - q) ** 2).reshape(rows, -1).sum(1)
            keep = np.ones(rows, bool) if best_err is None else err < best_err
            best_err = err if best_err is None else np.where(keep, err, best_err)
            best_l = np.where(keep, cand, best_l)
        self.l[k][:, s] = best_l
        self.scales[:, s] = spec.scale(self.d[k], best_l)

    def round(self, xt: np.ndarray, j: int, metric: np.ndarray) -> np.ndarray:
        """Lattice points for columns j..j+7 (xt (8, rows)); returns their decoded values (8, rows)."""
        s = (j % QK_K) // self.spec.sub
        x = np.ascontiguousarray(xt.T)  # (rows, 8)
        half = None if self.half is None else self.half[:, s]
        g, neg, q = nearest(self.spec, x, np.broadcast_to(metric, x.shape), self.scales[:, s], half)
        D = self.spec.dim
        self.idx[j // D:(j + UNIT) // D] = g.T
        self.neg[j:j + UNIT] = neg.T
        return q.T

    def pack(self, pack, qtype: str) -> QTensor:
        nb, rows = self.d.shape
        info = quant_info(qtype)
        per = QK_K // self.spec.dim
        out = np.empty((rows, nb, info.block_bytes), np.uint8)
        for k in range(nb):
            out[:, k] = pack(self.d[k], self.l[k], self.idx[k * per:(k + 1) * per].T,
                             self.neg[k * QK_K:(k + 1) * QK_K].T)
        return QTensor(qtype, (rows, nb * QK_K), out.reshape(rows, nb * info.block_bytes))
