"""SparseGPT (Frantar & Alistarh, 2023): prune and quantize a matrix in one OBS pass, into a sparse type.

    st = sparse_obs(w (rows, cols), H (cols, cols) or PreparedHessian, "Q4_K@2:4")        # SparseGPT
    st = sparse_obs(w, H, "Q4_K@2:4", score=wanda_scores)  # a fixed score's mask, errors compensated (Wanda + OBS)
    -> SparseQTensor (edgeslim/quants/sparse.py)

Like GPTQ (gptq.py), columns are walked left to right on the upper Cholesky
factor U of H^-1, each column's error e_j = (w_j - q_j) / U_jj spread onto the
later columns; a pruned weight's q is 0, a kept one's its value on the grid.

The kept weights are stored per row as a compact (rows, K) matrix in the value
type V (block B), so a value block must hold B kept weights of every row. The
columns are therefore walked in *spans* in which every row keeps exactly B
weights: N:M spans are B * m / n columns (every group of m keeps n), unstructured
spans cut the row into K / B near-equal parts (each row keeps B in each, a mild
balance constraint on the mask that the bitmap format itself does not need).
At each span's first column:

1. the mask of the span is chosen on the weights as updated so far, with
   SparseGPT's saliency w_ij^2 / U_jj^2 (the OBS error of pruning w_ij alone):
   the n best of each group of m, or the B best of each row in the span
   (with `score` given, e.g. Wanda's |w| ||x||, the mask follows that fixed
   score instead: the same choice rule, no adaptation);
2. the value block's grid (scales / mins) is fitted to the kept, updated
   weights with the type's own scale search, each weight weighted by its
   column's importance (diag H by default) - as GPTQ fits a block's grid at its
   first column;

then every column of the span is rounded (kept) or zeroed (pruned) and its
error compensated, and the span's error updates the rest of the matrix in one
product (GPTQ's lazy batch, with the span as the batch). Sub-block scales are
not re-chosen (GPTQ's refine_subblocks): the sub-blocks of a compact value
block lie at different columns in different rows.

Cost: as GPTQ with block_cols = the span (64 columns for Q8_0 at 2:4, 512 for
the k-quants), plus one mask selection per span.
"""
from __future__ import annotations

import numpy as np

from edgeslim.errors import InputError
from edgeslim.quants import quantize
from edgeslim.quants._common import safe_div
from edgeslim.quants.sparse import SparseQTensor, info_of, pack_index, quantize_values
from edgeslim.tables import SparseInfo, quant_info

from .gptq import PreparedHessian, _check, _format, _pack, prepare_hessian
from .prune import mask_for


def spans(info: SparseInfo, cols: int) -> list[tuple[int, int, int]]:
    """(first column, end column, kept per row) of each span (module doc): one value block per row for
    the block types; for float values (no blocks) spans of about FLOAT_SPAN columns."""
    kept = info.kept(cols)
    block = quant_info(info.value).block if info.value not in FLOAT_VALUES else 0
    n, m = info.pattern.n, info.pattern.m
    if m:
        per = block or (FLOAT_SPAN * n // m if cols % FLOAT_SPAN == 0 else n)  # kept per row and span
        width = per * m // n
        return [(k * width, (k + 1) * width, per) for k in range(cols // width)]
    ns = kept // block if block else -(-cols // FLOAT_SPAN)
    cuts = [round(k * cols / ns) for k in range(ns + 1)]
    quota = [round(k * kept / ns) for k in range(ns + 1)]
    return [(cuts[k], cuts[k + 1], quota[k + 1] - quota[k]) for k in range(ns)]


def sparse_obs(w: np.ndarray, H, qtype: str, score: np.ndarray | None = None, damp: float = 0.01,
               importance: np.ndarray | None = None) -> SparseQTensor:
    """Prune (SparseGPT's saliency, or the fixed `score` (rows, cols), higher = keep) and quantize w into
    the sparse type `qtype`, compensating each column's error on the later ones (module doc).
    H: (cols, cols) 2 X^T X / n or a PreparedHessian."""
    info = info_of(qtype)
    fmt = _FLOAT if info.value in FLOAT_VALUES else _format(info.value)
    w, H = _check(w, H, info.name, 1, importance)
    rows, cols = w.shape
    if not info.fits(cols):
        raise InputError(f"{info.name} does not fit rows of {cols} weights; plan another type for this tensor")
    if score is not None and np.shape(score) != (rows, cols):
        raise InputError(f"the pruning score must have the matrix's shape {(rows, cols)}, got {np.shape(score)}")
    prep = H if isinstance(H, PreparedHessian) else prepare_hessian(H, damp)
    imp = prep.diag if importance is None else np.asarray(importance, np.float32)
    Wt = np.array(w.T, np.float32, order="C")  # (cols, rows): column j is the contiguous row Wt[j]
    Wt[prep.dead] = 0.0
    keep = np.zeros((cols, rows), bool)
    kept = info.kept(cols)
    codes = np.zeros((rows, kept), np.float32 if fmt is _FLOAT else np.int16)
    params, k0 = [], 0
    for c0, c1, per in spans(info, cols):
        m1 = _span_mask(Wt[c0:c1], prep.U, c0, c1, info, per, None if score is None else score[:, c0:c1])
        keep[c0:c1] = m1
        params.append(None if fmt is _FLOAT else _fit_kept(fmt, Wt[c0:c1], m1, imp[c0:c1], info.value))
        codes[:, k0:k0 + per] = _walk_span(fmt, Wt, prep.U, c0, c1, m1, per, params[-1])
        k0 += per
    values = quantize(codes, info.value) if fmt is _FLOAT else _pack(fmt, (rows, kept), params, codes)
    return SparseQTensor(info.name, (rows, cols), values, pack_index(keep.T, info))


class _FloatFormat:
    """Float values (F16): no grid, a kept weight is its fp16 rounding; one "block" is one value."""

    block = sub = 1

    @staticmethod
    def steps(params):
        return None, None

    @staticmethod
    def round(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float16).astype(np.float32)


_FLOAT = _FloatFormat()
FLOAT_VALUES = ("F16",)
FLOAT_SPAN = 64  # columns per span (lazy batch) for float values


def _span_mask(W1: np.ndarray, U: np.ndarray, c0: int, c1: int, info: SparseInfo, per: int, fixed) -> np.ndarray:
    """(span, rows) bool: the best by the fixed score (rows, span), else by w^2 / U_jj^2 on the
    current weights; `per` kept weights per row (N:M: n of each group of m)."""
    if fixed is not None:
        score = np.ascontiguousarray(np.asarray(fixed, np.float32).T)  # (span, rows)
    else:
        d = np.diagonal(U)[c0:c1].astype(np.float32)  # (span,)
        score = (W1 * W1) / (d * d)[:, None]  # (span, rows)
    if info.pattern.m:
        return mask_for(score.T, info).T
    order = np.argsort(-score, axis=0, kind="stable")[:per]  # the best `per` of each row in the span
    m1 = np.zeros(score.shape, bool)
    np.put_along_axis(m1, order, True, axis=0)
    return m1


def _fit_kept(fmt, W1: np.ndarray, m1: np.ndarray, imp: np.ndarray, value: str) -> tuple:
    """The value block's grid parameters (fmt.pack's arguments but the codes) from the kept weights."""
    rows = W1.shape[1]
    vals = W1.T[m1.T].reshape(rows, fmt.block)  # (rows, B): each row's kept weights in column order
    wts = np.broadcast_to(imp[None, :], (rows, len(imp)))[m1.T].reshape(rows, fmt.block)  # their importance
    q = quantize_values(vals, value, wts)
    return tuple(np.array(v) for v in fmt.unpack(q.data))


def _walk_span(fmt, Wt: np.ndarray, U: np.ndarray, c0: int, c1: int, m1: np.ndarray, per: int,
               params) -> np.ndarray:
    """Round / zero columns c0..c1 of Wt (cols, rows) in place with error compensation; the span's
    codes (float values for F16) (rows, per) in kept order. The later columns get the span's error
    in one product."""
    rows = Wt.shape[1]
    a_all, b_all = fmt.steps(params)  # (rows, S) steps and offsets per sub-block of the value block
    kidx = np.cumsum(m1, axis=0) - 1  # (span, rows): the kept weight's place in the value block
    W1, U1 = Wt[c0:c1], U[c0:c1, c0:c1]
    codes = np.zeros((rows, per), np.float32 if fmt is _FLOAT else np.int16)
    err = np.empty(W1.shape, np.float32)
    r = np.arange(rows)
    table = getattr(fmt, "table", None)
    for i in range(c1 - c0):
        keep = m1[i]
        if fmt is _FLOAT:
            code = q = fmt.round(W1[i])
        else:
            code, q = _round(fmt, W1[i], a_all, b_all, r, np.clip(kidx[i], 0, per - 1) // fmt.sub, table)
        q = np.where(keep, q, np.float32(0))
        codes[r[keep], kidx[i][keep]] = code[keep]
        err[i] = (W1[i] - q) / U1[i, i]
        W1[i + 1:] -= np.multiply.outer(U1[i, i + 1:], err[i])
    Wt[c1:] -= U[c0:c1, c1:].T @ err
    return codes


def _round(fmt, x: np.ndarray, a_all, b_all, r, s, table):
    """(codes, decoded values) of column x (rows,) on each row's grid of sub-block s (rows,)."""
    a, b = a_all[r, s], b_all[r, s]
    v = (x + b) * safe_div(np.float32(1), a).astype(np.float32)
    if table is not None:
        code = fmt.index(v)
        return code, a * table[code] - b
    code = np.clip(np.rint(v) + fmt.zero, fmt.lo, fmt.hi)
    return code, a * (code - fmt.zero) - b
