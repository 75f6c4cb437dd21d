"""Which storage types the allocator chooses among: one table per family, and what it implies.

    family_types("ggml")              -> every writable candidate, smallest first, F16 on top
    effective_types(types, cols)        -> the ones a matrix with rows of `cols` weights can take
    types_for(types, name)            -> a tensor's ladder (`types`: one for all, or {name: ladder})
    tensor_bytes(qtype, (rows, cols)) -> bytes of a matrix in a type, sparse types included
    smallest_plan(shapes, types)      -> {tensor: its smallest fitting type}
    minimum_note(shapes, types)       -> (bytes, "why the minimum is what it is") for FitErrors

The ggml family's candidates are `GGML_CANDIDATES` (llama.cpp's whole menu of weight
types, in order of bits per weight) filtered by `tables.GGML_WRITABLE`: a type joins the
allocation as soon as `edgeslim.quants` registers it as writable, and every writable ggml
type must be listed either here or in `NOT_CANDIDATES` with the reason
(tests/test_allocate.py checks it). Per tensor, the candidates are the types whose block
divides its row length, and the block fallbacks of the others (`effective_types`): a 576-wide
row cannot take the 256-wide K and IQ types but can take the 32-wide legacy ones (Q4_0,
Q4_1, Q5_0, Q5_1, IQ4_NL, Q8_0), so a budget is reachable on any model down to the sum of
each tensor's smallest fitting type (`minimum_note` says what sets that sum).

The affine family (MLX's layout, edgeslim-only) is AFFINE{2..8}_G{group}. With pruning
(convert/prune.py) the candidates are per tensor ({name: ladder}) and include sparse types
("Q4_K@2:4": the ladder type as the kept values), which fall back in their value type.
"""
from __future__ import annotations

import re
from collections import defaultdict

from edgeslim.errors import InputError
from edgeslim.quants import fallback_type
from edgeslim.quants.sparse import sparse_fallback
from edgeslim.tables import AFFINE_BITS, GGML_WRITABLE, affine_name, quant_info, sparse_info
from edgeslim.targets import gib

FAMILIES = ("ggml", "affine")

# The ggml family's candidates, smallest first (bits per weight with scales, block width):
#   IQ2_XXS 2.06/256  IQ2_XS 2.31/256  IQ2_S 2.56/256
#   Q2_K 2.63/256  IQ3_XXS 3.06/256  IQ3_S 3.44/256  Q3_K 3.44/256  IQ4_XS 4.25/256
#   IQ4_NL 4.5/32  Q4_0 4.5/32  Q4_K 4.5/256  Q4_1 5.0/32  Q5_0 5.5/32  Q5_K 5.5/256
#   Q5_1 6.0/32  Q6_K 6.56/256  Q8_0 8.5/32
GGML_CANDIDATES = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "Q2_K", "IQ3_XXS", "IQ3_S", "Q3_K", "IQ4_XS",
                   "IQ4_NL", "Q4_0", "Q4_K", "Q4_1", "Q5_0", "Q5_K", "Q5_1", "Q6_K", "Q8_0")
# Writable ggml-family types that are not candidates, and why.
NOT_CANDIDATES = {
    "F32": "F16 keeps trained weights to well below quantization noise at half the bytes",
    "BF16": "the same bytes as F16 with a coarser mantissa",
    "TQ1_0": "ternary: only for models trained with ternary weights",
    "TQ2_0": "ternary: only for models trained with ternary weights",
    # measured: quantizing a 512K-weight sample takes 2.7 s CPU in IQ1_S or IQ1_M, 5.4 of the 8.6 s all
    # candidates take together (about +20 min CPU on a 7B model's analysis), for types below any budget
    # issue 10 aims at (2.5-5 bpw; IQ2_XXS already reaches 2.06)
    "IQ1_S": "1.56 bpw: below the budgets aimed at, and 1/3 of the analysis time on its own",
    "IQ1_M": "1.75 bpw: below the budgets aimed at, and 1/3 of the analysis time on its own",
}
# The last resort: IQ1 types join the ladder only when a budget cannot be met without them
# (pipeline._fit_budget), e.g. a widened 576-wide model at 2.5 bpw of its original weights.
LOWEST = ("IQ1_S", "IQ1_M")
TOP = "F16"  # above the quantized candidates for --bpw / --size budgets


def family_types(family: str, group: int = 64, top_f16: bool = True, lowest: bool = False) -> tuple[str, ...]:
    """Candidate types of a family, smallest first (+ F16 on top).

    ggml -> the writable types of GGML_CANDIDATES (with `lowest`: LOWEST below them);
    affine -> AFFINE{2..8}_G{group}.
    """
    if family == "ggml":
        types = tuple(t for t in (LOWEST if lowest else ()) + GGML_CANDIDATES if t in GGML_WRITABLE)
    elif family == "affine":
        types = tuple(affine_name(b, group) for b in AFFINE_BITS)
    else:
        raise InputError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")
    return types + ((TOP,) if top_f16 else ())


def effective_types(types, cols: int) -> list[str]:
    """The types a matrix with rows of `cols` weights can take, deduplicated: each candidate
    whose block divides cols, and for the others their block fallback (quants.fallback_type,
    e.g. AFFINE2_G64 -> AFFINE2_G32, a K type -> a 32-wide legacy type, a 32-wide type -> F16).
    A sparse type ("Q4_K@2:4") falls back in its value type, or to the value type's dense
    fallback when the pattern cannot cut the row (quants.sparse.sparse_fallback)."""
    out: list[str] = []
    for t in types:
        sp = sparse_info(t)
        e = fallback_type(t, cols) if sp is None else (sparse_fallback(t, cols) or fallback_type(sp.value, cols))
        if e not in out:
            out.append(e)
    return out


def types_for(types, name: str) -> tuple[str, ...]:
    """The candidate types of tensor `name`: `types` is one ladder for all, or {name: ladder}."""
    return tuple(types[name]) if isinstance(types, dict) else tuple(types)


def tensor_bytes(qtype: str, shape: tuple[int, int]) -> int:
    """Bytes a (rows, cols) matrix takes in `qtype`, sparse types included (values + index)."""
    sp = sparse_info(qtype)
    if sp:
        return sp.nbytes(int(shape[0]), int(shape[1]))
    return quant_info(qtype).nbytes(int(shape[0]) * int(shape[1]))


def smallest_plan(shapes: dict[str, tuple[int, int]], types) -> dict[str, str]:
    """{tensor: the fitting type with the fewest bytes} for (rows, cols) shapes (`types`: types_for)."""
    return {name: min(effective_types(types_for(types, name), int(shape[1])), key=lambda t: tensor_bytes(t, shape))
            for name, shape in shapes.items()}


def _value(qtype: str) -> str:
    """The block type of a type: itself, or a sparse type's value type."""
    sp = sparse_info(qtype)
    return sp.value if sp else qtype


def _pattern(name: str) -> str:
    return re.sub(r"^blk\.\d+\.", "blk.*.", name)


def minimum_note(shapes: dict[str, tuple[int, int]], types) -> tuple[int, str]:
    """(least bytes the matrices can take, what sets it) over (rows, cols) shapes.

    The note lists the tensors by smallest type, largest share first, and says which row
    widths keep them above the family's smallest type, e.g. "rows of 576 (not a multiple of
    256) take at least Q8_0 (8.5 bpw): blk.*.attn_q.weight, ... (20 tensors, 81% of the
    weights); Q2_K (2.62 bpw): blk.*.ffn_down.weight (4 tensors, 19% of the weights)".
    """
    plan = smallest_plan(shapes, types)
    numel = {n: int(r) * int(c) for n, (r, c) in shapes.items()}
    need = sum(tensor_bytes(plan[n], shapes[n]) for n in shapes)
    total = sum(numel.values()) or 1
    ladders = {t for n in shapes for t in types_for(types, n)} if isinstance(types, dict) else set(types)
    block = quant_info(min((_value(t) for t in ladders), key=lambda t: quant_info(t).bpw)).block  # smallest type's
    groups: dict[tuple[str, int], list[str]] = defaultdict(list)
    for n, t in plan.items():
        cols = int(shapes[n][1])
        groups[(t, cols if cols % block else 0)].append(n)
    parts = []
    for (t, cols), names in sorted(groups.items(), key=lambda kv: -sum(numel[n] for n in kv[1])):
        pats = sorted({_pattern(n) for n in names})
        shown = ", ".join(pats[:4]) + (", ..." if len(pats) > 4 else "")
        why = f"rows of {cols} (not a multiple of {block}) take at least " if cols else ""
        bpw = 8 * tensor_bytes(t, shapes[names[0]]) / numel[names[0]]
        parts.append(f"{why}{t} ({bpw:.3g} bpw): {shown} ({len(names)} tensors, "
                     f"{100 * sum(numel[n] for n in names) / total:.0f}% of the weights)".replace("(1 tensors", "(1 tensor"))
    text = (f"the smallest types that fit each tensor's rows need {gib(need)} ({need:,} bytes, "
            f"{8 * need / total:.3f} bits per weight): " + "; ".join(parts))
    return need, text
