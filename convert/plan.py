"""Which storage type each tensor gets, and what the whole plan weighs (exact bytes).

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
from edgeslim.tables import (AFFINE_BITS, GGML_WRITABLE, affine_name, is_quantizable, parse_affine, quant_info,
                             writable_types_text)

from .model import TensorSpec

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


def planned_bytes(shape: tuple[int, ...], qtype: str) -> int:
    """Bytes a tensor takes in the file (affine: codes + scales + biases)."""
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
    why = [f"{n} fell back from {t}: rows not a multiple of its {quant_info(t).block}-wide block"
           for t, n in fell.items()]
    return text + (f" ({'; '.join(why)})" if why else "")


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
