"""Pruning: which weights to drop (magnitude, Wanda; SparseGPT's in sparsegpt.py) and where.

    pr = Pruning("wanda", "2:4", 0.5)                  # --prune wanda --pattern 2:4 --sparsity 0.5
    pr.sparse_type("Q4_K", cols, name)                 # "Q4_K@2:4", a fallback, or None (kept dense)
    mask = select_mask(w, "Q4_K@2:4", "wanda", importance)   # (rows, cols) bool, True = kept

Scores (higher = keep):
* magnitude: |w_ij|;
* wanda (Sun et al., 2023): |w_ij| * ||x_j||, with ||x_j|| = sqrt(n * importance_j)
  from the calibration statistics (importance = mean x_j^2); without
  calibration it is magnitude;
* sparsegpt (Frantar & Alistarh, 2023): w_ij^2 / [H^-1]_jj^2 on the weights as
  updated by the error compensation so far, chosen inside the OBS pass
  (sparsegpt.py); outside it (allocation estimates) Wanda's score stands in.

Masks: N:M keeps the n best of every m consecutive columns of a row; unstructured
keeps the K best of each row, K = (1 - sparsity) * cols in whole blocks of the
value type, so every row keeps the same count (the stored format's rule,
edgeslim/quants/sparse.py). Only the decoder blocks' linear layers are pruned
(as SparseGPT and Wanda do): embeddings, the output head, norms stay dense.

OWL (Yin et al., 2024, "outlier weighed layerwise sparsity"): layer l's share of
Wanda scores above M times the layer's mean score (its outlier ratio D_l) sets
its sparsity: s_l = s + lam - 2 lam (D_l - min D) / (max D - min D), then shifted
so the weight-weighted mean stays s. Layers with more outliers are pruned less.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from edgeslim.errors import InputError
from edgeslim.quants.sparse import VALUE_TYPES
from edgeslim.tables import SPARSE_PATTERNS, SparseInfo, is_quantizable, sparse_info, sparse_name

from .notes import note
from .plan import Planned

METHODS = ("magnitude", "wanda", "sparsegpt")
PATTERNS = tuple(SPARSE_PATTERNS)
OWL_M = 5.0  # outlier threshold: scores above M x the layer mean (the OWL paper's M)
OWL_LAMBDA = 0.08  # default +- range of the per-layer sparsity
_BLOCK = re.compile(r"^blk\.(\d+)\.")


@dataclass
class Pruning:
    """What to prune: method, pattern, target sparsity (fraction pruned) and per-layer sparsities (OWL)."""

    method: str
    pattern: str = "unstructured"
    sparsity: float = 0.5
    owl: float | None = None  # lambda of OWL's per-layer sparsity, None: the same sparsity everywhere
    choice: bool = False  # under a budget, the allocator may keep a matrix dense (budget.candidate_types)
    layer_sparsity: dict[int, float] = field(default_factory=dict)  # filled by owl_sparsities

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"unknown --prune {self.method!r}; use one of {', '.join(METHODS)}")
        if self.pattern not in PATTERNS:
            raise InputError(f"unknown --pattern {self.pattern!r}; use one of {', '.join(PATTERNS)}")
        if self.pattern != "unstructured":
            p = SPARSE_PATTERNS[self.pattern]
            self.sparsity = 1.0 - p.n / p.m  # N:M fixes it
        elif not 0.0 < float(self.sparsity) < 1.0:
            raise InputError(f"--sparsity must be a fraction between 0 and 1 (e.g. 0.5), got {self.sparsity}")
        if self.owl is not None and self.pattern != "unstructured":
            raise InputError("--owl varies the sparsity per layer, which an N:M pattern fixes; "
                             "use --pattern unstructured or drop --owl")

    def applies(self, name: str, shape) -> bool:
        """Only 2-D weight matrices inside the decoder blocks are pruned."""
        return bool(_BLOCK.match(name)) and is_quantizable(name, len(shape))

    def percent(self, name: str) -> int:
        """Pruned percent for this tensor (unstructured): its layer's OWL sparsity or the target."""
        m = _BLOCK.match(name)
        s = self.layer_sparsity.get(int(m.group(1)), self.sparsity) if m else self.sparsity
        return int(min(99, max(1, round(100 * s))))

    def sparse_type(self, value: str, name: str) -> str:
        """The sparse type asked for this tensor with kept values in `value` (before block fallbacks:
        quants.sparse.sparse_fallback)."""
        pct = self.percent(name) if self.pattern == "unstructured" else None
        return sparse_name(value if value in VALUE_TYPES else "Q8_0", self.pattern, pct)

    def record(self) -> dict:
        """The `edgeslim.prune` metadata (without the per-tensor list)."""
        out = {"method": self.method, "pattern": self.pattern, "sparsity": round(float(self.sparsity), 4)}
        if self.choice:
            out["choice"] = True
        if self.owl is not None:
            out["owl_lambda"] = self.owl
            out["layer_sparsity"] = {str(k): round(v, 4) for k, v in sorted(self.layer_sparsity.items())}
        return out


def make_pruning(method: str | None, sparsity, pattern: str | None, owl: float | None,
                 family: str, choice: bool = False) -> Pruning | None:
    """The Pruning asked for (None: no --prune); one-line errors for options that need --prune or clash
    (a --sparsity other than the one an N:M pattern fixes)."""
    if method is None:
        given = [f for f, v in (("--sparsity", sparsity), ("--pattern", pattern), ("--owl", owl),
                                ("--prune-choice", choice or None)) if v is not None]
        if given:
            raise InputError(f"{given[0]} sets how to prune: add --prune magnitude|wanda|sparsegpt")
        return None
    if family == "affine":
        raise InputError("--prune stores the kept weights in ggml block types (sparse types Q4_K@2:4, ...); "
                         "drop --family affine")
    pattern = pattern or "unstructured"
    try:
        s = 0.5 if sparsity is None else float(sparsity)
    except (TypeError, ValueError):
        raise InputError(f"--sparsity must be a fraction between 0 and 1 (e.g. 0.5), got {sparsity!r}") from None
    nm = SPARSE_PATTERNS.get(pattern)
    if sparsity is not None and nm is not None and nm.m and abs(s - (1.0 - nm.n / nm.m)) > 1e-9:
        raise InputError(f"--pattern {pattern} fixes the sparsity at {1.0 - nm.n / nm.m:g}; drop --sparsity")
    return Pruning(method, pattern, s, None if owl is None else float(owl), bool(choice))


def prune_record(pruning: Pruning, plan: list[Planned]) -> dict:
    """The report's `prune` entry: the request, the pruned share of the decoder matrices' weights,
    and each pruned tensor's sparsity (1 - kept / cols)."""
    tensors, pruned, total = {}, 0, 0
    for p in plan:
        if pruning.applies(p.spec.name, p.spec.shape):
            rows, cols = (int(d) for d in p.spec.shape)
            sp = sparse_info(p.qtype)
            frac = 1.0 - sp.kept(cols) / cols if sp else 0.0
            tensors[p.spec.name] = round(frac, 4)
            pruned += round(frac * rows * cols)
            total += rows * cols
    return {**pruning.record(), "pruned_share": round(pruned / total, 4) if total else 0.0,
            "tensors": tensors}


def note_sparse(plan: list[Planned]) -> None:
    """Say once that the file holds sparse types, which only edgeslim runs."""
    sparse = sorted({p.qtype for p in plan if sparse_info(p.qtype)})
    if sparse:
        note(f"{sum(1 for p in plan if sparse_info(p.qtype))} tensors use edgeslim's sparse types "
             f"({', '.join(sparse[:4])}{' ...' if len(sparse) > 4 else ''}): llama.cpp cannot read this file, "
             "edgeslim runs it")


def block_index(name: str) -> int | None:
    """The decoder block a tensor belongs to ("blk.3.ffn_up.weight" -> 3), None outside the blocks."""
    m = _BLOCK.match(name)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------
# scores and masks
# ---------------------------------------------------------------------------
def scores(w: np.ndarray, method: str, importance: np.ndarray | None = None) -> np.ndarray:
    """(rows, cols) float32 keep-scores: |w|, times sqrt(importance) for wanda (and sparsegpt's stand-in)."""
    s = np.abs(np.asarray(w, np.float32))
    if method != "magnitude" and importance is not None:
        s *= np.sqrt(np.maximum(np.asarray(importance, np.float32), 0)).reshape(1, -1)
    return s


def nm_mask(score: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep the n highest scores of every m consecutive columns of each row (ties: the leftmost)."""
    rows, cols = score.shape
    g = score.reshape(rows, cols // m, m)
    order = np.argsort(-g, axis=2, kind="stable")[:, :, :n]
    mask = np.zeros(g.shape, bool)
    np.put_along_axis(mask, order, True, axis=2)
    return mask.reshape(rows, cols)


def topk_mask(score: np.ndarray, k: int) -> np.ndarray:
    """Keep the k highest scores of each row (ties: the leftmost)."""
    order = np.argsort(-score, axis=1, kind="stable")[:, :k]
    mask = np.zeros(score.shape, bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def mask_for(score: np.ndarray, info: SparseInfo) -> np.ndarray:
    """The mask the sparse type allows with the highest total score per group / row."""
    if info.pattern.m:
        return nm_mask(score, info.pattern.n, info.pattern.m)
    return topk_mask(score, info.kept(score.shape[1]))


def select_mask(w: np.ndarray, qtype: str, method: str, importance: np.ndarray | None = None) -> np.ndarray:
    """(rows, cols) bool mask (True = kept) for storing w in the sparse type `qtype`."""
    return mask_for(scores(w, method, importance), sparse_info(qtype))


# ---------------------------------------------------------------------------
# OWL: per-layer sparsity
# ---------------------------------------------------------------------------
def outlier_ratio(w: np.ndarray, importance: np.ndarray | None, m: float = OWL_M) -> tuple[int, int]:
    """(Wanda scores above m x their mean, weights) of one matrix."""
    s = scores(w, "wanda", importance)
    return int(np.count_nonzero(s > m * float(s.mean()))), int(s.size)


def owl_sparsities(counts: dict[int, tuple[int, int]], sparsity: float, lam: float) -> dict[int, float]:
    """{layer: sparsity} from {layer: (outliers, weights)} (module doc); mean (by weights) = sparsity."""
    if not counts:
        return {}
    layers = sorted(counts)
    d = np.array([counts[i][0] / max(counts[i][1], 1) for i in layers])
    n = np.array([counts[i][1] for i in layers], np.float64)
    span = d.max() - d.min()
    r = (d - d.min()) / span if span > 0 else np.full(len(d), 0.5)
    s = sparsity + lam - 2 * lam * r
    s += sparsity - float((s * n).sum() / n.sum())
    s = np.clip(s, 0.01, 0.99)
    return {i: float(v) for i, v in zip(layers, s)}
