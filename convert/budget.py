"""The plan pass under a budget (`--target`, `--bpw`, `--size`): bytes for the matrices, then a type per matrix.

    mats, fixed = matrices(model)
    budget = make_budget(model, mats, fixed, types, family, kind, value, target, ctx)   # FitError up front
    res = plan_to_budget(model, analyses, budget, signal, family, group, types, target, ctx)
    res.plan, res.fit, res.extra   # -> the transform and write passes

1. Budget (bytes for the 2-D weight matrices, embeddings and head included):
   `--bpw X`: X * matrix weights / 8; `--size S`: S - unquantized tensors -
   header (measured, `header.header_bytes`) - alignment padding, so the file
   is at most S; `--target NAME`: usable memory - KV cache at `--ctx` -
   runtime overhead - unquantized tensors (`allocate.budget_from_target`).
   When even each matrix's smallest fitting type does not fit: FitError with
   the minimum and the tensors (row widths) that set it
   (`candidates.minimum_note`), before any measuring or writing.
2. (The measure pass: calibration importance and the analysis of every matrix.)
3. Allocation (`allocate.allocate`): the signal's cost per (tensor, type),
   convex-hull knapsack to the budget. Candidates (convert/candidates.py): every
   writable ggml type whose block divides the tensor's rows (K, IQ and 32-wide
   legacy types) or AFFINE2..8_G{group} (affine), plus F16 on top for --bpw/--size
   (with pruning: their sparse types, `candidate_types`); with
   --target the ladder stops at Q8_0 / AFFINE8 like the uniform picker (F16
   doubles the memory traffic for a difference below the noise of a benchmark).

The default signal is erank, chosen by measurement: see allocate.DEFAULT_SIGNAL and
docs/quality-ref.md.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from edgeslim.errors import FitError, InputError
from edgeslim.quants.sparse import VALUE_TYPES
from edgeslim.targets import Fit, Target, gib, kv_cache_bytes

from .allocate import allocate, budget_from_bpw, budget_from_size, budget_from_target, parse_size
from .analyze import TensorAnalysis
from .candidates import minimum_note, types_for
from .header import ALIGNMENT, header_bytes
from .model import SourceModel, TensorSpec
from .plan import Planned, PlanResult, planned_bytes

HEADER_SLACK = 512  # bytes: keys whose presence depends on the allocation (general.file_type)


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
    """(bytes of every matrix at its smallest fitting type, what sets that minimum: candidates.minimum_note);
    `types`: one ladder or {name: ladder}."""
    return minimum_note({s.name: (int(s.shape[0]), int(s.shape[1])) for s in mats}, types)


def report_bound(mats: list[TensorSpec]) -> int:
    """An upper bound on the report's size (allocation record, types, measured errors)."""
    return 8192 + sum(3 * len(s.name.encode()) + 360 for s in mats)


def candidate_types(mats: list[TensorSpec], types: tuple, pruning) -> tuple | dict:
    """The allocation's candidates: the family ladder for every matrix, or with pruning {name: ladder}
    where the prunable matrices get each ladder type a sparse type can keep its values in
    (quants.sparse.VALUE_TYPES) as the values of their sparse type (with `pruning.choice`: those as
    well as the dense types, the knapsack decides per matrix)."""
    if pruning is None:
        return types
    values = tuple(t for t in types if t in VALUE_TYPES)
    out = {}
    for s in mats:
        sparse = tuple(pruning.sparse_type(t, s.name) for t in values) if pruning.applies(s.name, s.shape) else ()
        out[s.name] = (types + sparse if pruning.choice else sparse) or types
    return out


def make_budget(model: SourceModel, mats: list[TensorSpec], fixed: int, types, family: str, kind: str, value,
                tgt: Target | None, ctx: int, prune_json: str | None = None) -> Budget:
    """The byte budget for `kind`; FitError with the numbers when even the smallest types do not fit.
    prune_json: the `edgeslim.prune` key the header will hold (--size counts it)."""
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
    header = _header_bound(model, mats, family, types, prune_json)
    records = sum(3 if family == "affine" else 2 if any("@" in t for t in types_for(types, s.name)) else 1
                  for s in mats)  # GGUF tensors per matrix: affine 3, sparse 2
    padding = records * (ALIGNMENT - 1) + len(model.tensors) * (ALIGNMENT - 1)
    budget = budget_from_size(size, fixed, header + padding)
    if need > budget:
        raise FitError(f"--size {value} leaves {gib(budget)} ({budget:,} bytes) for the weight matrices "
                       f"(unquantized tensors {gib(fixed)}, header {gib(header + padding)}) but {note}; give --size "
                       f"{math.ceil((size - budget + need) / 1e4) / 100} MB or more")
    return Budget(kind, value, budget)


def _header_bound(model: SourceModel, mats: list[TensorSpec], family: str, types, prune_json=None) -> int:
    """Header bytes for any allocation: every matrix planned at its first candidate type (a sparse one
    when it has one: two records and a key; affine: three records), the longest type name in the
    choices, the report at its bound."""
    first = {s.name for s in mats}
    plan = [Planned(s, _widest(types_for(types, s.name)) if s.name in first else "F32") for s in model.tensors]
    longest = {s.name: max(types_for(types, s.name), key=len) for s in mats}
    choices = json.dumps({p.spec.name: longest.get(p.spec.name, "F32") for p in plan})
    fit = Fit("mixed", 1, 0, 0, None)
    return header_bytes(model, plan, fit, family, report_bound(mats), choices, prune_json) + HEADER_SLACK


def _widest(cands: tuple[str, ...]) -> str:
    """The candidate with the most header records: a sparse type (two tensors and a key), else the first."""
    return next((t for t in cands if "@" in t), cands[0])


def plan_to_budget(model: SourceModel, analyses: list[TensorAnalysis], budget: Budget, signal: str, family: str,
                   group: int, types, tgt: Target | None, ctx: int) -> PlanResult:
    """Allocate a type per matrix within `budget` (module doc) and plan every tensor."""
    alloc = allocate(analyses, budget.bytes, signal, family, group, types=types)
    chosen = alloc.tensor_types()
    plan = [Planned(s, chosen.get(s.name, "F32")) for s in model.tensors]
    used = {chosen[a.name] for a in analyses}
    label = used.pop() if len(used) == 1 else "mixed"
    kv = kv_cache_bytes(model.n_layers, ctx, model.n_kv_heads, model.head_dim)
    fit = Fit(label, ctx, sum(p.nbytes for p in plan), kv, tgt)
    extra = {"mode": budget.kind, "budget": budget.to_dict(), "allocation": alloc.to_dict()}
    # --size: reserve the bound the header estimate assumed (the write pass takes the larger of it and the need)
    mats = [s for s in model.tensors if s.name in chosen]
    return PlanResult(plan, fit, extra, report_bound(mats) if budget.kind == "size" else 0)
