"""The transform pass's contract, and its plainest form: round-to-nearest, one tensor at a time.

    for c in round_to_nearest(plan, importance, method):   # Converted, in plan (= file) order
        ...                                                # the write pass stores c.data

Every transform (this one, GPTQ in gptq_pass.py) is a generator of `Converted`
records in plan order: the tensor's stored form (a QTensor, or a float32 array
for F32) and its measured errors. It yields each tensor as soon as it exists
and keeps none, so the write pass drops it after writing and peak memory stays
at about one tensor (one decoder layer for GPTQ).

A tensor planned in a sparse type ("Q4_K@2:4") is pruned here too: the mask of
the pruning `method` (prune.py: magnitude, or Wanda's |w| ||x|| with the
calibration importance), then its kept weights quantized (quants/sparse.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from edgeslim.quants import QTensor, dequantize, quantize, sparse
from edgeslim.tables import sparse_info

from .plan import Planned
from .prune import select_mask
from .source import load_checked


@dataclass
class Converted:
    """One planned tensor in its stored form, with its measured errors (None where not measured)."""

    planned: Planned
    data: object  # QTensor, SparseQTensor, or a float32 array for F32
    rel_rms: float | None = None  # ||dequantized - w|| / ||w||
    rel_out: float | None = None  # output error on the calibration Hessian (GPTQ)


def round_to_nearest(plan: list[Planned], importance: dict | None = None,
                     method: str = "magnitude") -> Iterator[Converted]:
    """Each planned tensor loaded, quantized (importance-weighted where given; sparse types pruned by
    `method` first) and measured, in plan order."""
    for p in plan:
        yield rtn_one(p, (importance or {}).get(p.spec.name), method)


def rtn_one(p: Planned, importance: np.ndarray | None = None, method: str = "magnitude") -> Converted:
    """Round-to-nearest one planned tensor (a sparse type: pruned by `method`, then its kept weights);
    its relative RMS error against the unpruned weights (None for F32)."""
    w = load_checked(p.spec)  # float32, numpy order
    if p.qtype == "F32":
        return Converted(p, np.ascontiguousarray(w, dtype=np.float32))
    if sparse_info(p.qtype):
        st = sparse.compress(w, select_mask(w, p.qtype, method, importance), p.qtype, importance)
        return Converted(p, st, relative_rms(w, sparse.dequantize(st)))
    q = quantize(w, p.qtype, importance)
    return Converted(p, q, quantization_error(w, q))


def _rows(q: QTensor, r0: int, r1: int) -> QTensor:
    """Rows r0:r1 of a quantized matrix (every type stores whole rows contiguously)."""
    r1 = min(r1, q.shape[0])
    part = (lambda a: None if a is None else a[r0:r1])
    return QTensor(q.qtype, (r1 - r0, q.shape[1]), q.data[r0:r1], part(q.scales), part(q.biases))


def quantization_error(w: np.ndarray, q: QTensor) -> float:
    """Relative RMS of dequantize(q) against w, dequantizing ~1M weights at a time
    (a whole-tensor dequantized copy would double the peak memory)."""
    w2 = w.reshape(q.shape)
    step = max(1, (1 << 20) // q.shape[1])
    num = den = 0.0
    for r in range(0, q.shape[0], step):
        a = w2[r:r + step].astype(np.float64)
        num += float(np.square(dequantize(_rows(q, r, r + step)) - a).sum())
        den += float(np.square(a).sum())
    return _ratio(num, den)


def relative_rms(w: np.ndarray, d: np.ndarray, chunk: int = 1 << 20) -> float:
    """||d - w|| / ||w||, accumulated in float64 `chunk` weights at a time (a whole 7B
    matrix in float64 would be three 360 MB temporaries)."""
    wf, df = np.ravel(w), np.ravel(d)
    num = den = 0.0
    for k in range(0, wf.size, chunk):
        a = wf[k:k + chunk].astype(np.float64)
        num += float(np.square(df[k:k + chunk] - a).sum())
        den += float(np.square(a).sum())
    return _ratio(num, den)


def _ratio(num: float, den: float) -> float:
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return math.sqrt(num / den)
