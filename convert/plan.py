"""Which storage type each tensor gets, and what the whole plan weighs (exact bytes).

    plan, fit = plan_uniform(model, qtype, family, target, ctx)   # the plan pass for --quant (or F16)

Only 2-D weight matrices take the chosen type; norms, biases and tables stay
F32 (`tables.is_quantizable`). A matrix whose row length is not a multiple of
the type's block gets `quants.fallback_type` (as llama.cpp: IQ/Q2_K/Q3_K -> IQ4_NL,
Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, ternary -> Q4_0, then F16; affine
G64 -> G32 -> F16), and the plan records why.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgeslim.errors import InputError
from edgeslim.quants import fallback_type
from edgeslim.quants.sparse import sparse_fallback
from edgeslim.tables import (AFFINE_BITS, GGML_WRITABLE, affine_name, is_quantizable, parse_affine, quant_info,
                             sparse_info, writable_types_text)
from edgeslim.targets import Fit, Target, kv_cache_bytes, pick_type, require_fit

from .model import SourceModel, TensorSpec
from .notes import note

FAMILIES = ("ggml", "affine")
DEFAULT_QUANT = "F16"
QUANT_HELP = (f"one type for every matrix: {writable_types_text()}; with --family affine also the bits alone "
              f"({', '.join(map(str, AFFINE_BITS))}, group from --group)")


@dataclass
class Planned:
    """One tensor's decision."""

    spec: TensorSpec
    qtype: str
    fallback_from: str | None = None  # the requested type it could not take

    @property
    def nbytes(self) -> int:
        return planned_bytes(self.spec.shape, self.qtype)

    @property
    def quantized(self) -> bool:
        return self.qtype != "F32"


@dataclass
class PlanResult:
    """The plan pass's result, what the transform and write passes need: the plan, its fit, the
    report's keys about how it was chosen, and the bytes the report must at least be given."""

    plan: list[Planned]
    fit: Fit
    extra: dict
    report_size: int = 0


def planned_bytes(shape: tuple[int, ...], qtype: str) -> int:
    """Bytes a tensor takes in the file (affine: codes + scales + biases; sparse: values + index)."""
    sp = sparse_info(qtype)
    if sp:
        return sp.nbytes(int(shape[0]), int(shape[1]))
    n = 1
    for d in shape:
        n *= int(d)
    return quant_info(qtype).nbytes(n)


def family_of(qtype: str) -> str:
    """'ggml' for ggml and float types, 'affine' for AFFINEb_Gg."""
    return "affine" if parse_affine(qtype) else "ggml"


def resolve_quant(quant: str | None, family: str | None, group: int = 64) -> tuple[str | None, str]:
    """Canonical type name (or None: let the target choose) and its family; one-line errors.
    `group` completes the affine shorthand ("--family affine --quant 4" -> AFFINE4_G{group})."""
    if family is not None and family not in FAMILIES:
        raise InputError(f"unknown --family {family!r}; use one of {', '.join(FAMILIES)}")
    if quant is None:
        return None, family or "ggml"
    q = quant.strip().upper()
    if q.isdigit():  # "--family affine --quant 4"
        if family != "affine":
            raise InputError(f"--quant {quant} is the affine shorthand: add --family affine, or write "
                             f"AFFINE{q}_G{group}")
        if int(q) not in AFFINE_BITS:
            raise InputError(f"--quant {quant}: affine types have {', '.join(map(str, AFFINE_BITS))} bits")
        q = affine_name(int(q), group)
    try:
        name = quant_info(q).name
    except ValueError:
        name = None
    if name is None or (name not in GGML_WRITABLE and not parse_affine(name)):
        raise InputError(f"unknown --quant {quant!r}; use one of {writable_types_text()}")
    fam = family_of(name)
    if family is not None and family != fam and name not in ("F32", "F16", "BF16"):
        raise InputError(f"--quant {name} is a {fam} type but --family is {family}; drop one of them")
    return name, family or fam


def tensor_type(name: str, shape: tuple[int, ...], qtype: str) -> tuple[str, str | None]:
    """(type for this tensor, the requested type if it had to fall back)."""
    if not is_quantizable(name, len(shape)):
        return "F32", None
    chosen = fallback_type(qtype, int(shape[-1]))
    return chosen, (qtype if chosen != qtype else None)


def make_plan(specs: list[TensorSpec], qtype: str) -> list[Planned]:
    out = []
    for s in specs:
        t, was = tensor_type(s.name, s.shape, qtype)
        out.append(Planned(s, t, was))
    return out


def plan_bytes(specs: list[TensorSpec], qtype: str) -> int:
    """Exact weight bytes if every matrix takes `qtype` (with fallbacks)."""
    return sum(p.nbytes for p in make_plan(specs, qtype))


def written_summary(plan: list[Planned]) -> str:
    """What a plan really writes, e.g. "Q4_K x 12, Q8_0 x 2 (2 fell back from Q4_K: rows not a multiple
    of its 256-wide block)"; for the converter's last line."""
    hist = type_histogram(plan)
    text = ", ".join(f"{t} x {h['tensors']}" for t, h in hist.items()) or "no weight matrices"
    fell: dict[str, int] = {}
    for p in plan:
        if p.fallback_from:
            fell[p.fallback_from] = fell.get(p.fallback_from, 0) + 1
    why = [f"{n} fell back from {t}: {_why_fallback(t)}" for t, n in fell.items()]
    return text + (f" ({'; '.join(why)})" if why else "")


def _why_fallback(asked: str) -> str:
    sp = sparse_info(asked)
    if sp is None:
        return f"rows not a multiple of its {quant_info(asked).block}-wide block"
    return f"rows cannot hold its kept weights in whole {sp.value} blocks of {quant_info(sp.value).block}" \
        + (f" and groups of {sp.pattern.m}" if sp.pattern.m else "")


def type_histogram(plan: list[Planned]) -> dict[str, dict[str, int]]:
    """{type: {"tensors": n, "weights": n}} over the 2-D weight matrices, most weights first."""
    out: dict[str, dict[str, int]] = {}
    for p in plan:
        if is_quantizable(p.spec.name, len(p.spec.shape)):
            h = out.setdefault(p.qtype, {"tensors": 0, "weights": 0})
            h["tensors"] += 1
            h["weights"] += p.spec.n_elements
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["weights"]))


def matrix_bpw(plan: list[Planned]) -> float:
    """Bits per weight over the 2-D weight matrices (what --bpw budgets)."""
    mats = [p for p in plan if is_quantizable(p.spec.name, len(p.spec.shape))]
    n = sum(p.spec.n_elements for p in mats)
    return 8.0 * sum(p.nbytes for p in mats) / n if n else 0.0


def plan_uniform(model: SourceModel, qtype: str | None, family: str, tgt: Target | None,
                 ctx: int, pruning=None) -> tuple[list[Planned], Fit]:
    """One type for every matrix (given, the best that fits the target, or F16) and its fit;
    FitError when it does not fit. Block fallbacks are recorded in each Planned (`note_fallbacks`).
    pruning (prune.Pruning): the decoder matrices take that type as the values of their sparse type."""
    fit = choose_type(model, qtype, family, tgt, ctx, pruning)
    return prune_plan(make_plan(model.tensors, fit.qtype), pruning), fit


def choose_type(model: SourceModel, qtype: str | None, family: str, tgt: Target | None, ctx: int,
                pruning=None) -> Fit:
    """The type to write and its fit: given, picked for the target, or the default."""
    kv = kv_cache_bytes(model.n_layers, ctx, model.n_kv_heads, model.head_dim)

    def weights_for(q: str) -> int:
        return sum(p.nbytes for p in prune_plan(make_plan(model.tensors, q), pruning))

    if qtype is None and tgt is not None:
        return pick_type(family, weights_for, kv, tgt, ctx)
    q = qtype or DEFAULT_QUANT
    fit = Fit(q, ctx, weights_for(q), kv, tgt)
    require_fit(fit, family, weights_for)
    return fit


def note_fallbacks(plan: list[Planned]) -> None:
    """One stderr note per (row length, requested type, used type), like llama.cpp's warnings."""
    groups: dict[tuple[int, str, str], list[str]] = {}
    for p in plan:
        if p.fallback_from:
            groups.setdefault((int(p.spec.shape[-1]), p.fallback_from, p.qtype), []).append(p.spec.name)
    for (row, asked, used), names in groups.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        sp = sparse_info(asked)
        why = (f"rows of {row} are not a multiple of {asked}'s block of {quant_info(asked).block}" if sp is None
               else f"rows of {row} cannot hold {asked} ({sp.kept(row)} kept weights per row"
                    f"{f' in groups of {sp.pattern.m}' if sp.pattern.m else ''}, in {sp.value} blocks of "
                    f"{quant_info(sp.value).block})")
        note(f"{why}; {len(names)} tensor(s) use {used} instead ({shown})")


def prune_plan(plan: list[Planned], pruning) -> list[Planned]:
    """The plan with every matrix `pruning` (prune.Pruning) applies to in its sparse type (the planned dense
    type as the values, block fallbacks recorded in `fallback_from`); matrices the pattern cannot cut
    stay dense."""
    if pruning is None:
        return plan
    out = []
    for p in plan:
        if not pruning.applies(p.spec.name, p.spec.shape) or p.qtype == "F32":
            out.append(p)
            continue
        asked = pruning.sparse_type(p.qtype, p.spec.name)
        used = sparse_fallback(asked, int(p.spec.shape[-1]))
        out.append(Planned(p.spec, used or p.qtype, None if used == asked else asked))
    return out
