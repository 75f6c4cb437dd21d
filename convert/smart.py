"""Smart compression: a storage type per weight matrix under a budget (`--target`, `--bpw`, `--size`).

    res = plan_to_budget(model, family, group, signal, kind, value, target, ctx, cal, progress)
    res.plan, res.fit, res.extra   # -> pipeline.write

1. Budget (bytes for the 2-D weight matrices, embeddings and head included):
   `--bpw X`: X * matrix weights / 8; `--size S`: S - unquantized tensors -
   header (measured, `header.header_bytes`) - alignment padding, so the file
   is at most S; `--target NAME`: usable memory - KV cache at `--ctx` -
   runtime overhead - unquantized tensors (`allocate.budget_from_target`).
   When even each matrix's smallest fitting type does not fit: FitError with
   the minimum and the tensors (row widths) that set it
   (`candidates.minimum_note`), before any measuring or writing.
2. Calibration (`calibration_for`), importance only: mean x^2 per input column
   of every linear, one decoder layer at a time (convert/calibrate.py).
3. Analysis pass: each matrix is loaded alone, measured (spectrum, moments)
   and quantized to every candidate type on a row sample
   (`analyze.analyze_tensor`, importance-weighted when calibrated), then freed.
4. Allocation (`allocate.allocate`): the signal's cost per (tensor, type),
   convex-hull knapsack to the budget. Candidates (convert/candidates.py): every
   writable ggml type whose block divides the tensor's rows (K, IQ and 32-wide
   legacy types) or AFFINE2..8_G{group} (affine), plus F16 on top for --bpw/--size; with
   --target the ladder stops at Q8_0 / AFFINE8 like the uniform picker (F16
   doubles the memory traffic for a difference below the noise of a benchmark).
5. The caller writes the plan: GPTQ layer by layer whenever calibration ran
   (the default; pipeline.use_gptq), else importance-weighted or plain RTN.

When calibration runs (`calibration_for`):
* `--calib FILE`: always, on that text;
* `--gptq`: always (Hessians), on the built-in text unless --calib is given;
* otherwise automatically, on the built-in text, when the signal is erank
  (the default), sensitivity or hybrid, the source is a Hugging Face folder
  (or hub id) and torch + transformers are importable: sensitivity and hybrid
  weight their errors by it, and every signal's rounding uses it as llama.cpp
  uses an imatrix (erank's allocation itself needs no calibration);
* never with `calib=False` (`--no-calib`), for GGUF sources (no model code to
  run), or for the uniform signal unless asked.
`--calib` or `--gptq` on a GGUF source, or without torch, is an InputError.

The default signal is erank, chosen by measurement: see allocate.DEFAULT_SIGNAL and
docs/quality-ref.md.
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeslim.errors import FitError, InputError
from edgeslim.inspect import allocation_summary
from edgeslim.targets import Fit, Target, gib, kv_cache_bytes

from .allocate import allocate, budget_from_bpw, budget_from_size, budget_from_target, parse_size
from .analyze import TensorAnalysis, analyze_tensor, family_types
from .candidates import minimum_note
from .gguf_source import is_gguf
from .header import ALIGNMENT, header_bytes
from .model import SourceModel, TensorSpec
from .pipeline import build_report, load_checked, progress_bar
from .plan import Planned, planned_bytes

AUTO_CALIB_SIGNALS = ("erank", "sensitivity", "hybrid")
HEADER_SLACK = 512  # bytes: keys whose presence depends on the allocation (general.file_type)


# ---------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------
@dataclass
class Calibration:
    """What the converter calibrates on; `importance` is filled by `run_importance`."""

    folder: Path
    text: str | None  # None: the built-in sample
    source: str  # "built-in" or the file's name
    n_tokens: int  # asked for
    importance: dict[str, np.ndarray] = field(default_factory=dict)
    used_tokens: int = 0
    sequences: int = 0

    def run_importance(self) -> None:
        """Per-linear mean x^2 (no Hessians), one decoder layer at a time."""
        from .calibrate import collect

        stats = collect(self.folder, self.text, self.n_tokens)
        self.importance = stats.importance
        self.used_tokens, self.sequences = stats.n_tokens, stats.n_sequences

    def to_dict(self) -> dict:
        return {"source": self.source, "tokens": self.used_tokens, "tokens_requested": self.n_tokens,
                "sequences": self.sequences}


def _has_torch() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


def _hf_folder(src: str) -> Path | None:
    """The HF folder behind `src` (a hub id resolves to its download), None for GGUF files."""
    p = Path(src)
    if p.is_dir():
        return p
    if p.exists() or is_gguf(p):
        return None
    from .hf import download, looks_like_hub_id

    return download(src) if looks_like_hub_id(src) else None


def calibration_for(src: str, model: SourceModel, calib, n_tokens: int, signal: str | None,
                    gptq: bool) -> Calibration | None:
    """The calibration to run (module doc: the rule), or None. calib: a text file path,
    None (automatic) or False (never); signal: the allocation signal (None: no allocation)."""
    if calib is False:
        if gptq:
            raise InputError("--gptq needs calibration data; drop --no-calib (or give --calib FILE)")
        return None
    asked = calib is not None or gptq
    if not asked and signal not in AUTO_CALIB_SIGNALS:
        return None
    if n_tokens <= 0:
        raise InputError(f"--calib-tokens must be positive, got {n_tokens}")
    folder = _hf_folder(src)
    flag = "--gptq" if gptq and calib is None else "--calib"
    if folder is None:
        if asked:
            raise InputError(f"{flag} runs the model with transformers, which needs the Hugging Face folder; "
                             f"{src} is a GGUF file: convert from the original folder or drop {flag}")
        return None
    if not _has_torch():
        if asked:
            raise InputError(f"{flag} needs torch and transformers (pip install torch transformers); "
                             f"install them or drop {flag}")
        return None
    from .calibrate import read_calib_text

    text = read_calib_text(calib) if calib is not None else None
    return Calibration(folder, text, Path(calib).name if calib is not None else "built-in", int(n_tokens))


# ---------------------------------------------------------------------------
# budget
# ---------------------------------------------------------------------------
@dataclass
class Budget:
    """Bytes the 2-D weight matrices may take, and what the user asked for."""

    kind: str  # "target" | "bpw" | "size"
    value: object
    bytes: int

    def to_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value, "bytes": self.bytes}


def matrices(model: SourceModel) -> tuple[list[TensorSpec], int]:
    """(the 2-D weight matrices, bytes of every other tensor, kept F32)."""
    from edgeslim.tables import is_quantizable

    mats = [s for s in model.tensors if is_quantizable(s.name, len(s.shape))]
    names = {s.name for s in mats}
    return mats, sum(planned_bytes(s.shape, "F32") for s in model.tensors if s.name not in names)


def min_bytes(mats: list[TensorSpec], types) -> tuple[int, str]:
    """(bytes of every matrix at its smallest fitting type, what sets that minimum: candidates.minimum_note)."""
    return minimum_note({s.name: _matrix_shape(s) for s in mats}, types)


def report_bound(mats: list[TensorSpec]) -> int:
    """An upper bound on the report's size (allocation record, types, measured errors)."""
    return 8192 + sum(3 * len(s.name.encode()) + 360 for s in mats)


def make_budget(model: SourceModel, mats: list[TensorSpec], fixed: int, types, family: str, kind: str, value,
                tgt: Target | None, ctx: int) -> Budget:
    """The byte budget for `kind`; FitError with the numbers when even the smallest types do not fit."""
    need, note = min_bytes(mats, types)
    n = sum(s.n_elements for s in mats)
    if kind == "target":
        kv = kv_cache_bytes(model.n_layers, ctx, model.n_kv_heads, model.head_dim)
        least = Fit("the minimum", ctx, fixed + need, kv, tgt)
        if not least.fits:
            raise FitError(f"the model does not fit {tgt.name} even at the smallest {family} types: "
                           f"{least.short()} ({note}); choose a bigger target, a smaller --ctx or a smaller model")
        return Budget(kind, tgt.name, budget_from_target(tgt.name, model.n_layers, model.n_kv_heads,
                                                          model.head_dim, ctx, fixed))
    if kind == "bpw":
        budget = budget_from_bpw(value, n)
        if need > budget:
            raise FitError(f"--bpw {value} gives {gib(budget)} ({budget:,} bytes) for {n:,} matrix weights but "
                           f"{note}; give --bpw {math.ceil(800 * need / n) / 100} or more")
        return Budget(kind, float(value), budget)
    size = parse_size(value) if isinstance(value, str) else int(value)
    if size <= 0:
        raise InputError(f"--size must be positive, got {value!r}")
    header = _header_bound(model, mats, family, types)
    padding = (3 if family == "affine" else 1) * len(mats) * (ALIGNMENT - 1) + len(model.tensors) * (ALIGNMENT - 1)
    budget = budget_from_size(size, fixed, header + padding)
    if need > budget:
        raise FitError(f"--size {value} leaves {gib(budget)} ({budget:,} bytes) for the weight matrices "
                       f"(unquantized tensors {gib(fixed)}, header {gib(header + padding)}) but {note}; give --size "
                       f"{math.ceil((size - budget + need) / 1e4) / 100} MB or more")
    return Budget(kind, value, budget)


def _header_bound(model: SourceModel, mats: list[TensorSpec], family: str, types) -> int:
    """Header bytes for any allocation: every matrix planned at the family's first type (affine:
    three records each), the longest type name in the choices, the report at its bound."""
    first = {s.name for s in mats}
    plan = [Planned(s, types[0] if s.name in first else "F32") for s in model.tensors]
    longest = max(types, key=len)
    choices = json.dumps({p.spec.name: (longest if p.spec.name in first else "F32") for p in plan})
    fit = Fit("mixed", 1, 0, 0, None)
    return header_bytes(model, plan, fit, family, report_bound(mats), choices) + HEADER_SLACK


# ---------------------------------------------------------------------------
# analysis, allocation, plan
# ---------------------------------------------------------------------------
def analysis_pass(mats: list[TensorSpec], types, importance: dict, progress: bool | None) -> list[TensorAnalysis]:
    """Measure each matrix alone (loaded, analyzed, freed): stats and per-type errors."""
    bar = progress_bar(sum(s.n_elements for s in mats), progress, desc="analyze")
    out = []
    for s in mats:
        if bar is not None:
            bar.set_postfix_str(s.name, refresh=False)
        w = load_checked(s)
        out.append(analyze_tensor(s.name, w, types, importance.get(s.name)))
        del w
        if bar is not None:
            bar.update(s.n_elements)
    if bar is not None:
        bar.close()
    return out


def _matrix_shape(s: TensorSpec) -> tuple[int, int]:
    return (1, s.shape[0]) if len(s.shape) == 1 else (int(s.shape[0]), int(s.shape[1]))


@dataclass
class SmartPlan:
    """What pipeline.write needs: the plan, the fit, the report's extra keys and its reserved size."""

    plan: list[Planned]
    fit: Fit
    extra: dict
    report_size: int = 0


def plan_to_budget(model: SourceModel, family: str, group: int, signal: str, kind: str, value,
                   tgt: Target | None, ctx: int, cal: Calibration | None, progress: bool | None) -> SmartPlan:
    """Budget, calibration, analysis and allocation (module doc); prints the fit report."""
    types = family_types(family, group, top_f16=kind != "target")
    mats, fixed = matrices(model)
    budget = make_budget(model, mats, fixed, types, family, kind, value, tgt, ctx)
    if cal is not None:
        cal.run_importance()
    if signal == "uniform":  # one type for all: only byte sizes matter, nothing to measure
        analyses = [TensorAnalysis(m.name, _matrix_shape(m), {}) for m in mats]
    else:
        analyses = analysis_pass(mats, types, cal.importance if cal is not None else {}, progress)
    alloc = allocate(analyses, budget.bytes, signal, family, group, types=types)
    chosen = alloc.tensor_types()
    plan = [Planned(s, chosen.get(s.name, "F32")) for s in model.tensors]
    used = {chosen[s.name] for s in mats}
    label = used.pop() if len(used) == 1 else "mixed"
    kv = kv_cache_bytes(model.n_layers, ctx, model.n_kv_heads, model.head_dim)
    fit = Fit(label, ctx, sum(p.nbytes for p in plan), kv, tgt)
    extra = {"mode": kind, "budget": budget.to_dict(), "allocation": alloc.to_dict()}
    head = build_report(model, plan, fit, family, {}, dict(extra, calibration=cal.to_dict() if cal else None))
    print(fit.text(), file=sys.stderr)
    print("\n".join(allocation_summary(head, indent="  ")), file=sys.stderr)
    # --size: reserve the bound the header estimate assumed (pipeline.write takes the larger of it and the need)
    return SmartPlan(plan, fit, extra, report_bound(mats) if kind == "size" else 0)
