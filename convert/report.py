"""The conversion report stored in `edgeslim.report` (JSON), and the bytes to reserve for it.

    head = build_report(model, plan, fit, family, {}, extra)      # known before writing
    size = report_size(head, plan, gptq)                          # room for the measured errors too
    full = build_report(model, plan, fit, family, errors, extra, out_errors)
"""
from __future__ import annotations

import json
import math

from edgeslim import __version__
from edgeslim.targets import Fit

from .model import SourceModel
from .plan import Planned, matrix_bpw, type_histogram


def build_report(model: SourceModel, plan: list[Planned], fit: Fit, family: str, errors: dict[str, float],
                 extra: dict | None = None, out_errors: dict[str, float] | None = None) -> dict:
    """The JSON stored in `edgeslim.report`: fit numbers, types, fallbacks, measured errors, and
    `extra` (mode, budget, allocation, calibration, gptq). rel_out (GPTQ only): measured output error
    sqrt(tr(E H E^T) / tr(W H W^T)) per tensor on the calibration Hessian."""
    sizes = {p.spec.name: p.spec.n_elements for p in plan}
    report = {
        "edgeslim_version": __version__,
        "source": model.source,
        "quant": fit.qtype,
        "family": family,
        "bpw": round(matrix_bpw(plan), 4),
        "types": type_histogram(plan),
        "fit": fit.to_dict(),
        **(extra or {}),
        "fallbacks": {p.spec.name: {"requested": p.fallback_from, "used": p.qtype, "row": int(p.spec.shape[-1])}
                      for p in plan if p.fallback_from},
        "rel_rms_mean": _sig(_mean(errors, sizes)),
        "rel_rms_max": _sig(max(errors.values(), default=0.0)),
        "rel_rms": {k: _sig(v) for k, v in errors.items()},
    }
    if out_errors:
        report["rel_out_mean"] = _sig(_mean(out_errors, sizes))
        report["rel_out"] = {k: _sig(v) for k, v in out_errors.items()}
    return report


def report_size(head: dict, plan: list[Planned], gptq: bool) -> int:
    """Bytes to reserve for `edgeslim.report`: the report known before writing plus room for
    the measured errors (a name and a number per quantized tensor, twice with GPTQ)."""
    per = sum(len(p.spec.name.encode()) + 40 for p in plan if p.quantized)
    return len(json.dumps(head, separators=(",", ":")).encode()) + per * (2 if gptq else 1) + 256


def _mean(errors: dict[str, float], sizes: dict[str, int]) -> float:
    n = sum(sizes[k] for k in errors)
    return sum(errors[k] * sizes[k] for k in errors) / n if n else 0.0


def _sig(x: float) -> float:
    return float(f"{x:.4g}") if math.isfinite(x) else x
