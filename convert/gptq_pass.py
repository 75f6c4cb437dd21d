"""`--gptq`: write the file while a second calibration pass walks the decoder layers.

    errors, out_errors = stream_gptq(g, plan, cal, n_layers, bar, write_rtn)

Hessians are (cols, cols) per linear input: all of a 7B model's would be
tens of GB, so they are never held together. `calibrate.collect(...,
want_hessian=True, on_layer=...)` hands over one decoder layer's Hessians at
a time; the callback writes every planned tensor up to and including that
layer, in file order (GGUFOut writes in plan order):

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
it is written (`stats.replace`), so the next layer is calibrated on the
quantized model's activations (GPTQ's sequential mode), and each Hessian and
its factor are dropped after the last tensor that reads that input: with a
7B model's 11008-wide ffn_down this keeps the peak under 4 GB (measured in
docs/benchmarks.md).
Per GPTQ'd tensor the report gets the output error relative to the output,
sqrt(tr(E H E^T) / tr(W H W^T)) on a row sample (rows are independent).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from edgeslim.gguf_write import GGUFOut
from edgeslim.quants import dequantize

from .analyze import sample_rows
from .gptq import gptq_quantize, prepare_hessian
from .model import tensor_order
from .plan import Planned

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


class _Writer:
    """The plan written in order, layer by layer."""

    def __init__(self, g: GGUFOut, plan: list[Planned], importance: dict, bar, write_rtn: Callable):
        self.g, self.plan, self.importance, self.bar, self.write_rtn = g, plan, importance, bar, write_rtn
        self.pos = 0
        self.errors: dict[str, float] = {}
        self.out_errors: dict[str, float] = {}

    def _next_order(self):
        return tensor_order(self.plan[self.pos].spec.name) if self.pos < len(self.plan) else None

    def rtn_until(self, stop=None, importance: dict | None = None) -> None:
        """RTN-write planned tensors whose file order is before `stop` (None: all that are left)."""
        while self.pos < len(self.plan) and (stop is None or self._next_order() < stop):
            self._one_rtn(self.plan[self.pos], importance)

    def layer(self, i: int, hessian: dict[str, np.ndarray], replace: Callable, release: Callable) -> bool:
        """Write decoder layer i (GPTQ where a Hessian exists), loading each GPTQ'd tensor's
        dequantized weights into the calibration layer with `replace`; True when any was.

        The calibration layer's copies of the tensors to GPTQ are `release`d first (each is
        read from the checkpoint when its turn comes). `hessian` is consumed: each entry is
        dropped once its tensor is written, and a factor once no later tensor of the layer
        shares its input."""
        self.rtn_until((1, i))
        release([p.spec.name for p in self.plan[self.pos:]
                 if tensor_order(p.spec.name) == (1, i) and p.spec.name in hessian and p.qtype not in FLOAT_TYPES])
        prepared: dict[int, object] = {}
        users = {}  # id(H) -> names of this layer still to read it
        for name, H in hessian.items():
            users.setdefault(id(H), set()).add(name)
        replaced = False
        while self.pos < len(self.plan) and self._next_order() == (1, i):
            p = self.plan[self.pos]
            H = hessian.pop(p.spec.name, None)
            if H is None or p.qtype in FLOAT_TYPES:
                self._one_rtn(p)
            else:
                self._one_gptq(p, H, prepared, replace)
                replaced = True
            if H is not None:
                users[id(H)].discard(p.spec.name)
                if not users[id(H)]:
                    prepared.pop(id(H), None)
            del H
        return replaced

    def _one_gptq(self, p: Planned, H: np.ndarray, prepared: dict, replace: Callable) -> None:
        """GPTQ one tensor against H (factored once per input in `prepared`), write it, record
        its errors, and load its dequantized weights into the calibration layer."""
        from .pipeline import load_checked, relative_rms

        if self.bar is not None:
            self.bar.set_postfix_str(p.spec.name, refresh=False)
        w = load_checked(p.spec)
        if id(H) not in prepared:
            prepared[id(H)] = prepare_hessian(H)
        q = gptq_quantize(w, prepared[id(H)], p.qtype)
        self.g.write(p.spec.name, q)
        d = dequantize(q)
        del q
        self.errors[p.spec.name] = relative_rms(w, d)
        self.out_errors[p.spec.name] = output_rel_error(w, d, H)
        del w
        replace(p.spec.name, d)
        self.pos += 1
        if self.bar is not None:
            self.bar.update(p.spec.n_elements)

    def _one_rtn(self, p: Planned, importance: dict | None = None) -> None:
        imp = self.importance if importance is None else importance
        e = self.write_rtn(self.g, p, imp.get(p.spec.name), self.bar)
        if e is not None:
            self.errors[p.spec.name] = e
        self.pos += 1


def stream_gptq(g: GGUFOut, plan: list[Planned], cal, n_layers: int, bar, write_rtn: Callable
                ) -> tuple[dict[str, float], dict[str, float]]:
    """Write `plan` into `g` with GPTQ layer by layer (module doc); ({name: rel RMS}, {name: rel output error}).

    cal: smart.Calibration (folder, text, tokens; `importance` from its first pass);
    write_rtn(g, planned, importance, bar) -> rel RMS | None writes one tensor round-to-nearest."""
    from .calibrate import collect

    w = _Writer(g, plan, cal.importance, bar, write_rtn)

    def on_layer(stats):
        if stats.index >= n_layers:  # the head: everything left, with this pass's importance
            w.rtn_until(None, {**cal.importance, **stats.importance})
            return None
        hessian = stats.hessian or {}
        stats.hessian = None  # the writer's dict is the last reference: it frees each Hessian
        return w.layer(stats.index, hessian, stats.replace, stats.release)

    collect(cal.folder, cal.text, cal.n_tokens, want_hessian=True, on_layer=on_layer)
    w.rtn_until(None)
    return w.errors, w.out_errors
