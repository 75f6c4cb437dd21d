"""The GPTQ transform: quantize each decoder layer inside a second calibration pass.

    for c in gptq_stream(plan, cal, importance, n_layers, method):   # Converted, in plan order
        ...                                                           # the write pass stores c.data

Hessians are (cols, cols) per linear input: all of a 7B model's would be
tens of GB, so they are never held together. `calibrate.layers(...,
want_hessian=True)` yields one decoder layer's Hessians at a time; this pass
then yields every planned tensor up to and including that layer, in file
order (the write pass stores them as they come, GGUFOut in plan order):

* tensors before the layer (token embedding, rope tables): RTN, weighted by
  the first pass's importance (a tied embedding is the head, whose importance
  only that pass has by then);
* the layer's linears with a block type: `gptq.gptq_quantize` against their
  Hessian (factored once per shared input: q/k/v, gate/up); floats and norms
  as they are;
* at the head (after the last layer): everything left, RTN weighted by the
  importance this pass measured (the output head included, as in the
  reference GPTQ, which leaves the head to round-to-nearest).

Each tensor's dequantized weights go into the calibration layer as soon as
it is quantized (`stats.replace`), so the next layer is calibrated on the
quantized model's activations (GPTQ's sequential mode), and each Hessian and
its factor are dropped after the last tensor that reads that input: with a
7B model's 11008-wide ffn_down this keeps the peak under 4 GB (measured in
docs/benchmarks.md).
Per GPTQ'd tensor the report gets the output error relative to the output,
sqrt(tr(E H E^T) / tr(W H W^T)) on a row sample (rows are independent).

A linear planned in a sparse type ("Q4_K@2:4") is pruned and quantized in the
same place by the OBS pass of sparsegpt.py: with SparseGPT's own mask
(`method` "sparsegpt") or the fixed magnitude / Wanda scores (prune.py), the
pruned weights' error compensated like the rounding error.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from edgeslim.quants import dequantize, sparse
from edgeslim.tables import sparse_info

from .analyze import sample_rows
from .gptq import gptq_quantize, prepare_hessian
from .model import tensor_order
from .plan import Planned
from .prune import scores
from .source import load_checked
from .sparsegpt import sparse_obs
from .transform import Converted, relative_rms, rtn_one

FLOAT_TYPES = ("F32", "F16", "BF16")
F64 = np.float64


def output_rel_error(w: np.ndarray, d: np.ndarray, H: np.ndarray, max_weights: int = 1 << 19) -> float:
    """sqrt(sum_r e_r H e_r^T / sum_r w_r H w_r^T) over a random sample of rows (e = w - d).

    The products run in H's float32 (a float64 copy of a 7B ffn_down's H is 970 MB); the
    sums in float64."""
    idx = sample_rows(w.shape[0], w.shape[1], max_weights)
    ws, ds = (w, d) if idx is None else (w[idx], d[idx])
    H = np.asarray(H, np.float32)
    ws = np.asarray(ws, np.float32)
    e = ws - np.asarray(ds, np.float32)
    num = float(np.einsum("ij,ij->", e @ H, e, dtype=F64))
    den = float(np.einsum("ij,ij->", ws @ H, ws, dtype=F64))
    return float(np.sqrt(num / den)) if den > 0 else 0.0


def gptq_stream(plan: list[Planned], cal, importance: dict, n_layers: int,
                method: str = "sparsegpt") -> Iterator[Converted]:
    """`plan` quantized with GPTQ layer by layer (module doc), as Converted records in plan order.

    cal: measure.Calibration (folder, text, tokens); importance: {name: (cols,)} from the
    first calibration pass, weighting the round-to-nearest tensors; method: how sparse types
    choose their mask (prune.METHODS)."""
    from .calibrate import layers

    todo = _Todo(plan, method)
    for stats in layers(cal.folder, cal.text, cal.n_tokens, want_hessian=True):
        if stats.index >= n_layers:  # the head: everything left, with this pass's importance
            yield from todo.rtn_until(None, {**importance, **stats.importance})
            continue
        hessian = stats.hessian or {}
        stats.hessian = None  # this pass's dict is the last reference: it frees each Hessian
        yield from todo.layer(stats, hessian, importance)
    yield from todo.rtn_until(None, importance)


class _Todo:
    """The plan still to be transformed, in order."""

    def __init__(self, plan: list[Planned], method: str):
        self.plan, self.pos, self.method = plan, 0, method

    def _next_order(self):
        return tensor_order(self.plan[self.pos].spec.name) if self.pos < len(self.plan) else None

    def _take(self) -> Planned:
        self.pos += 1
        return self.plan[self.pos - 1]

    def rtn_until(self, stop, importance: dict) -> Iterator[Converted]:
        """Round-to-nearest the planned tensors whose file order is before `stop` (None: all that are left)."""
        while self.pos < len(self.plan) and (stop is None or self._next_order() < stop):
            p = self._take()
            yield rtn_one(p, importance.get(p.spec.name), self.method)

    def layer(self, stats, hessian: dict[str, np.ndarray], importance: dict) -> Iterator[Converted]:
        """Decoder layer stats.index (GPTQ where a Hessian exists), loading each GPTQ'd tensor's
        dequantized weights into the calibration layer with `stats.replace`.

        The calibration layer's copies of the tensors to GPTQ are released first (each is
        read from the checkpoint when its turn comes). `hessian` is consumed: each entry is
        dropped once its tensor is done, and a factor once no later tensor of the layer
        shares its input."""
        here = (1, stats.index)
        yield from self.rtn_until(here, importance)
        stats.release([p.spec.name for p in self.plan[self.pos:]
                       if tensor_order(p.spec.name) == here and p.spec.name in hessian
                       and p.qtype not in FLOAT_TYPES])
        prepared: dict[int, object] = {}
        users: dict[int, set] = {}  # id(H) -> names of this layer still to read it
        for name, H in hessian.items():
            users.setdefault(id(H), set()).add(name)
        while self.pos < len(self.plan) and self._next_order() == here:
            p = self._take()
            H = hessian.pop(p.spec.name, None)
            if H is None or p.qtype in FLOAT_TYPES:
                yield rtn_one(p, importance.get(p.spec.name), self.method)
            else:
                yield _gptq_one(p, H, prepared, stats.replace, self.method, importance.get(p.spec.name))
            if H is not None:
                users[id(H)].discard(p.spec.name)
                if not users[id(H)]:
                    prepared.pop(id(H), None)
            del H


def _gptq_one(p: Planned, H: np.ndarray, prepared: dict, replace, method: str, importance) -> Converted:
    """GPTQ (a sparse type: the OBS pass of sparsegpt.py) one tensor against H (factored once per
    input in `prepared`), measure its errors, and load its dequantized weights into the calibration layer."""
    w = load_checked(p.spec)
    if id(H) not in prepared:
        prepared[id(H)] = prepare_hessian(H)
    if sparse_info(p.qtype):
        fixed = None if method == "sparsegpt" else scores(w, method, importance)
        q = sparse_obs(w, prepared[id(H)], p.qtype, score=fixed)
        d = sparse.dequantize(q)
    else:
        q = gptq_quantize(w, prepared[id(H)], p.qtype)
        d = dequantize(q)
    out = Converted(p, q, relative_rms(w, d), output_rel_error(w, d, H))
    del w
    replace(p.spec.name, d)
    return out
