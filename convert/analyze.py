"""Measure a weight matrix for "smart compression": shape of its spectrum and
distribution, and the actual (importance-weighted) error of every candidate type.

numpy only (no torch): `edgeslim inspect --analyze` uses it too.

    tensor_stats(w, importance=None) -> dict      # erank, kurtosis, outlier share, ...
    type_errors(w, types, importance=None) -> {type: weighted squared error}
    analyze_tensor(name, w, types, importance=None) -> TensorAnalysis   # both, for convert/allocate.py

Definitions (w is (rows, cols) in numpy order: rows = outputs, cols = inputs):

* effective rank (Roy & Vetterli 2007): with singular values s_i and
  p_i = s_i / sum(s), erank = exp(-sum p_i log p_i); 1 <= erank <= min(rows, cols).
  `erank_fraction` = erank / min(rows, cols).  Identity -> full rank; a rank-k
  product with equal singular values -> k.
* kurtosis: Pearson's (fourth standardized moment), NOT excess: a gaussian
  gives 3, a uniform 1.8, heavy tails > 3.
* outlier share: fraction of weights with |w - mean| > OUTLIER_SIGMAS * std
  (3 sigma: 0.27% for a gaussian).  `max_sigma` = max |w - mean| / std.
* importance (calibration, computed elsewhere with torch): for each input
  column j the mean of x_j^2 over calibration tokens, i.e. the diagonal of the
  layer Hessian X^T X / n (llama.cpp's imatrix).  Interface expected from the
  calibration step:  importance: dict[gguf_tensor_name, np.ndarray (cols,)].
* weighted error of a type: sum_j imp_j * sum_i (w_ij - q_ij)^2, which is
  E||(W - Q) x||^2 per token under a diagonal approximation of X^T X; with no
  importance imp_j = 1 (plain sum of squared errors).  The matrix is quantized
  *with* the importance, as the converter will.

Cost control (the defaults keep a 7B model's analysis in minutes, not hours):

* singular values: exact `np.linalg.svd` up to EXACT_SVD_DIM, above that the
  eigenvalues of the float64 Gram matrix of the smaller side (same values up to
  rounding, about 5x faster: one BLAS-3 product + `eigvalsh`).  Above
  ERANK_MAX_DIM the spectrum is measured on a random submatrix that keeps the
  aspect ratio (rows and columns sampled by the same factor) and the fraction
  is reported for it: this is unbiased for noise-like (Marchenko-Pastur)
  spectra and reads a little high for strongly decaying ones (measured: 0.67
  exact vs 0.69 at half size for a power-law s_i ~ i^-0.6).  `erank_exact`
  says which was used.
* quantization errors: rows are independent (blocks run along rows and the
  importance is per column), so the error of a random sample of rows, scaled
  by rows / sampled, estimates the whole tensor's error without bias; at most
  ERR_MAX_WEIGHTS weights (but at least ERR_MIN_ROWS rows) are quantized.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeslim.errors import InputError
from edgeslim.quants import dequantize, quantize
from edgeslim.tables import quant_info, sparse_info

# re-exported: callers import them here
from .candidates import FAMILIES, effective_types, family_types, tensor_bytes, types_for  # noqa: F401

OUTLIER_SIGMAS = 3.0
EXACT_SVD_DIM = 512  # min(rows, cols) up to which np.linalg.svd is used directly
ERANK_MAX_DIM = 2048  # min(rows, cols) above which the spectrum is taken on a submatrix
ERR_MAX_WEIGHTS = 1 << 19  # weights quantized per type to estimate its error
ERR_MIN_ROWS = 32
_CHUNK = 1 << 20  # weights per float64 chunk in the moment sums


# ---------------------------------------------------------------------------
# spectrum
# ---------------------------------------------------------------------------
def singular_values(w: np.ndarray) -> np.ndarray:
    """All min(rows, cols) singular values, float64, descending (see module doc for the method)."""
    a = np.asarray(w, dtype=np.float64)
    if min(a.shape) <= EXACT_SVD_DIM:
        return np.linalg.svd(a, compute_uv=False)
    g = a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a  # (k, k), k = min(rows, cols)
    ev = np.linalg.eigvalsh(g)[::-1]
    ev[ev < ev[0] * len(ev) * np.finfo(np.float64).eps] = 0.0  # rounding noise of the zero eigenvalues
    return np.sqrt(ev)


def erank_from_singular_values(s: np.ndarray) -> float:
    """exp(entropy of s / sum(s)); 0 for an all-zero matrix."""
    s = np.asarray(s, np.float64)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def effective_rank(w: np.ndarray, max_dim: int | None = ERANK_MAX_DIM, seed: int = 0) -> tuple[float, float, bool]:
    """(erank, erank / min(rows, cols), exact?) of a 2-D matrix.

    When min(rows, cols) > max_dim the fraction is measured on a random
    submatrix with both sides scaled by max_dim / min(rows, cols), and erank
    is that fraction times the full min(rows, cols) (module doc: accuracy).
    """
    w = _as_matrix(w)
    k = min(w.shape)
    exact = max_dim is None or k <= max_dim
    if not exact:
        f = max_dim / k
        rng = np.random.default_rng(seed)
        r = np.sort(rng.choice(w.shape[0], max(1, round(w.shape[0] * f)), replace=False))
        c = np.sort(rng.choice(w.shape[1], max(1, round(w.shape[1] * f)), replace=False))
        w = w[r][:, c]
    er = erank_from_singular_values(singular_values(w))
    frac = er / min(w.shape)
    return (er if exact else frac * k), frac, exact


# ---------------------------------------------------------------------------
# distribution
# ---------------------------------------------------------------------------
def moments(w: np.ndarray) -> dict:
    """mean, std, Pearson kurtosis, outlier share and max |w - mean| / std (float64, by chunks)."""
    flat = _as_matrix(w).reshape(-1)
    n = flat.size
    s1 = sum(float(c.sum(dtype=np.float64)) for c in _chunks(flat))
    mean = s1 / n
    m2 = m4 = 0.0
    amax = 0.0
    for c in _chunks(flat):
        d = c.astype(np.float64) - mean
        d2 = d * d
        m2 += float(d2.sum())
        m4 += float((d2 * d2).sum())
        amax = max(amax, float(np.abs(d).max()))
    var = m2 / n
    std = float(np.sqrt(var))
    if std == 0.0:
        return {"mean": mean, "std": 0.0, "kurtosis": 0.0, "outlier_share": 0.0, "max_sigma": 0.0}
    thr = OUTLIER_SIGMAS * std
    out = sum(int(np.count_nonzero(np.abs(c.astype(np.float64) - mean) > thr)) for c in _chunks(flat))
    return {"mean": mean, "std": std, "kurtosis": (m4 / n) / (var * var), "outlier_share": out / n,
            "max_sigma": amax / std}


def tensor_stats(w: np.ndarray, importance: np.ndarray | None = None, max_dim: int | None = ERANK_MAX_DIM) -> dict:
    """Everything measured on one matrix without quantizing it, as plain floats.

    Keys: rows, cols, numel, mean, std, kurtosis (Pearson, gaussian = 3),
    outlier_share, max_sigma, erank, erank_fraction, erank_exact, energy
    (sum w^2); with importance also act_mean (mean x^2 over input channels),
    act_peak (max / mean of it) and wenergy (sum_j imp_j * ||w_:,j||^2, i.e.
    E||W x||^2 per token: the weighted error's natural scale).
    """
    w = _as_matrix(w)
    er, frac, exact = effective_rank(w, max_dim)
    col_energy = _col_energy(w)  # (cols,)
    out = {"rows": int(w.shape[0]), "cols": int(w.shape[1]), "numel": int(w.size), **moments(w),
           "erank": er, "erank_fraction": frac, "erank_exact": exact, "energy": float(col_energy.sum())}
    imp = check_importance(importance, w.shape[1])
    if imp is not None:
        mean = float(imp.mean())
        out.update(act_mean=mean, act_peak=float(imp.max() / mean) if mean > 0 else 0.0,
                   wenergy=float(col_energy @ imp))
    return out


# ---------------------------------------------------------------------------
# quantization error
# ---------------------------------------------------------------------------
def check_importance(importance, cols: int) -> np.ndarray | None:
    """float64 (cols,) non-negative finite importance, or None; InputError naming the fix otherwise."""
    if importance is None:
        return None
    imp = np.asarray(importance, dtype=np.float64).reshape(-1)
    if imp.shape[0] != cols or not np.isfinite(imp).all() or (imp < 0).any():
        raise InputError(f"importance must be {cols} finite non-negative values (mean x^2 per input column), got "
                         f"shape {imp.shape}: recompute the calibration statistics for this tensor")
    return imp


def sample_rows(rows: int, cols: int, max_weights: int | None = ERR_MAX_WEIGHTS, seed: int = 0) -> np.ndarray | None:
    """Sorted row indices to quantize when the matrix is larger than max_weights, else None (all rows)."""
    if max_weights is None or rows * cols <= max_weights:
        return None
    k = max(ERR_MIN_ROWS, max_weights // cols)
    if k >= rows:
        return None
    return np.sort(np.random.default_rng(seed).choice(rows, k, replace=False))


def measure_errors(w: np.ndarray, types, importance: np.ndarray | None = None,
                   max_weights: int | None = ERR_MAX_WEIGHTS, seed: int = 0,
                   prune_method: str = "wanda") -> dict[str, tuple[float, float]]:
    """{type actually used: (plain squared error, importance-weighted squared error)} for the whole tensor.

    Types whose block does not divide cols are replaced by `quants.fallback_type`
    (so the keys may differ from `types`); duplicates are measured once. A sparse type is
    pruned by `prune_method`'s mask first (convert/prune.py; SparseGPT's is estimated by Wanda's),
    its error counting the pruned weights.
    """
    w = _as_matrix(w)
    rows, cols = w.shape
    imp = check_importance(importance, cols)
    idx = sample_rows(rows, cols, max_weights, seed)
    ws = w if idx is None else w[idx]
    scale = 1.0 if idx is None else rows / len(idx)
    out = {}
    for t in effective_types(types, cols):
        d = _reconstruct(ws, t, imp, prune_method)
        col_err = _col_energy(d - ws)  # (cols,) sum_i (w_ij - q_ij)^2
        plain = float(col_err.sum()) * scale
        out[t] = (plain, float(col_err @ imp) * scale if imp is not None else plain)
    return out


def _reconstruct(ws: np.ndarray, t: str, imp, prune_method: str) -> np.ndarray:
    """ws (rows, cols) stored in type t and decoded (a sparse type: pruned, then its kept weights)."""
    if sparse_info(t) is None:
        return dequantize(quantize(ws, t, imp))
    from edgeslim.quants import sparse

    from .prune import select_mask

    return sparse.dequantize(sparse.compress(ws, select_mask(ws, t, prune_method, imp), t, imp))


def type_errors(w: np.ndarray, types, importance: np.ndarray | None = None,
                max_weights: int | None = ERR_MAX_WEIGHTS, seed: int = 0) -> dict[str, float]:
    """{type actually used: sum_j imp_j * sum_i (w_ij - q_ij)^2} (plain squared error without importance)."""
    return {t: e[1] for t, e in measure_errors(w, types, importance, max_weights, seed).items()}


@dataclass
class TensorAnalysis:
    """What the allocator needs about one quantizable matrix.

    sse / wsse: {type: plain / importance-weighted squared error over the
    whole tensor} (equal when `weighted` is False); empty when errors were not
    measured (only the erank signal then works, with a nominal error model).
    """

    name: str
    shape: tuple[int, int]
    stats: dict
    sse: dict[str, float] = field(default_factory=dict)
    wsse: dict[str, float] = field(default_factory=dict)
    weighted: bool = False

    @property
    def numel(self) -> int:
        return int(self.shape[0]) * int(self.shape[1])

    def rel_rms(self, qtype: str) -> float | None:
        """sqrt(plain squared error / energy) of a measured type: comparable to the converter's rel_rms."""
        e, energy = self.sse.get(qtype), self.stats.get("energy", 0.0)
        if e is None:
            return None
        return float(np.sqrt(e / energy)) if energy > 0 else 0.0


def analyze_tensor(name: str, w: np.ndarray, types, importance: np.ndarray | None = None,
                   measure: bool = True, max_weights: int | None = ERR_MAX_WEIGHTS,
                   max_dim: int | None = ERANK_MAX_DIM, prune_method: str = "wanda") -> TensorAnalysis:
    """Stats and (if `measure`) per-type errors of one matrix; `types` is e.g. family_types("ggml"), or
    {name: ladder} (types_for)."""
    w = _as_matrix(w)
    stats = tensor_stats(w, importance, max_dim)
    res = TensorAnalysis(name, (int(w.shape[0]), int(w.shape[1])), stats, weighted=importance is not None)
    if measure:
        errs = measure_errors(w, types_for(types, name), importance, max_weights, prune_method=prune_method)
        res.sse = {t: e[0] for t, e in errs.items()}
        res.wsse = {t: e[1] for t, e in errs.items()}
    return res


# ---------------------------------------------------------------------------
def _as_matrix(w) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim == 1:
        w = w[None, :]
    if w.ndim != 2:
        raise InputError(f"analysis takes a 2-D (rows, cols) matrix, got shape {w.shape}: reshape it first")
    if not np.issubdtype(w.dtype, np.floating):
        raise InputError(f"analysis takes float weights, got {w.dtype}: dequantize the tensor first")
    return w if w.dtype == np.float32 else w.astype(np.float32)


def _chunks(flat: np.ndarray):
    for i in range(0, flat.size, _CHUNK):
        yield flat[i:i + _CHUNK]


def _col_energy(w: np.ndarray) -> np.ndarray:
    """(cols,) float64 sum over rows of w^2, by row chunks."""
    rows, cols = w.shape
    step = max(1, _CHUNK // max(1, cols))
    acc = np.zeros(cols, np.float64)
    for r in range(0, rows, step):
        c = w[r:r + step].astype(np.float64)
        acc += (c * c).sum(axis=0)
    return acc


def type_bytes(qtype: str, numel: int) -> int:
    """Bytes a tensor of `numel` weights takes in `qtype` (affine: codes + scales + biases)."""
    return quant_info(qtype).nbytes(numel)
