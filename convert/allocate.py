"""Choose a storage type per tensor under a byte budget (numpy/stdlib only, no torch).

    budget = budget_from_bpw(4.5, analyses)                    # --bpw 4.5
    budget = budget_from_size(parse_size("3.9GB"), fixed)      # --size 3.9GB
    budget = budget_from_target("m2-8gb", n_layers, n_kv_heads, head_dim, ctx, fixed)   # --target
    alloc = allocate(analyses, budget, signal="sensitivity", family="ggml")
    alloc.tensor_types()  -> {name: type}   (edgeslim.tensor_types)
    alloc.to_dict()       -> JSON-able record (edgeslim.report)

`analyses` are `convert.analyze.TensorAnalysis` of the quantizable matrices
only (embeddings and output head included); norms and other F32 tensors are
the caller's `fixed` bytes.

The problem is a multiple-choice knapsack: tensor t picks one option
(type, bytes_t, cost_t), minimize sum cost subject to sum bytes <= budget.
`greedy_allocate` solves it the Lagrangian way:

1. each tensor's options are reduced to their lower convex hull in
   (bytes, cost): dominated options (more bytes, no less cost) go, and so do
   options above the chord of their neighbours (for any multiplier lambda
   they never minimize cost + lambda * bytes);
2. every tensor starts at its smallest option (if even that exceeds the
   budget: FitError with the numbers);
3. hull steps are taken in order of cost reduction per byte, best first (a
   tensor's steps come in that order by convexity, so this is a heap of one
   pending step per tensor), until the next step does not fit;
4. the bytes left are spent on the single option change (any option, hull or
   not) that reduces cost most.

Guarantees (tested against `exact_allocate`, a Pareto-frontier dynamic
program for small instances):

* never over budget;
* bounded gap: taking the first step that did not fit fractionally is the
  optimum of the LP relaxation, so `lower_bound` = cost after step 3 - (its
  reduction per byte) * (bytes left) <= the true optimum, and the result is
  within one step's reduction of it (exactly optimal when step 3 ends with no
  bytes left: the Lagrangian solution);
* monotone: a bigger budget never gives a larger total cost. The steps of
  3 are a prefix of one fixed order, longer for a bigger budget; and no set
  of changes fitting in the bytes left can reduce more than (best pending
  reduction per byte) * (bytes left) < the next step's reduction (each
  tensor's options lie above its hull), so the move of 4 at a smaller budget
  never beats the extra step a bigger budget takes. (Continuing past a step
  that does not fit, or repeating 4, improves some budgets but breaks this;
  on small random instances it was no better on average either: mean gap
  to the optimum 2.1% against 1.3%, 5.4% against 6.2% on quantization-like
  ones. The gap is one tensor's step, so it shrinks with the tensor count.)

Signals (what "cost" means; all reduce to per-tensor (bytes, cost) options):

* uniform: one type for every tensor, the best of the family's uniform
  ladder (targets.LADDERS: Q2_K..Q8_0, F16) that fits (block fallbacks as in
  the plan); no knapsack.
* sensitivity: the measured squared error of each type, importance-weighted
  (E||(W - Q) x||^2 per token) when calibration statistics were given, else
  plain (inputs assumed of unit scale). Tensors lacking importance in a
  calibrated run (e.g. the token embedding, a lookup) get their plain error
  times the median `act_mean` of the calibrated ones, to share the units.
* erank: a proxy that needs no calibration: numel * erank_fraction *
  relative error of the type (measured plain SSE / ||W||^2, or the nominal
  4^-bpw model when errors were not measured), times HEAD_WEIGHT for the
  output head (output.weight, or a tied token_embd.weight). Every weight counts the same,
  scaled by how much of its matrix's dimensionality it uses: a matrix whose
  spectrum is spread (high erank fraction) has no redundant directions to
  absorb noise, a low-rank one does.
* hybrid: sensitivity scaled by a per-tensor importance erank_fraction /
  mean erank_fraction: measured (weighted) error, tilted towards spread
  spectra.
"""
from __future__ import annotations

import heapq
import math
import re
from dataclasses import dataclass

from edgeslim.errors import FitError, InputError
from edgeslim.targets import DEFAULT_CTX, LADDERS, OVERHEAD_BYTES, get_target, gib, kv_cache_bytes
from edgeslim.tables import TensorNames, quant_info, sparse_info

from .analyze import TensorAnalysis
from .candidates import effective_types, family_types, minimum_note, tensor_bytes, types_for

SIGNALS = ("erank", "sensitivity", "uniform", "hybrid")
# The default, chosen by measurement (scripts/bench_quality.py on the reference model,
# docs/quality-ref.md): at 3.0-4.5 bpw erank's files had 0.57-0.61x the KL divergence
# of sensitivity's at the same size, and lower dPPL at every size.
DEFAULT_SIGNAL = "erank"
# erank: the output head's error lands on the logits unfiltered, so its cost counts HEAD_WEIGHT times.
# Measured on the demo model (tied head, erank + GPTQ, KL by llama-perplexity, docs/quality-ref.md),
# KL with weight 1 -> 4 at the same file sizes: --bpw 3.0 0.0834 -> 0.1015 (worse: the head's bits
# starve the rest), 3.5 0.0619 -> 0.0325, 4.0 0.0187 -> 0.0118, 4.5 0.0130 -> 0.0061; at 3.5 a
# weight of 16 (head Q5_K) gave 0.0365.
HEAD_WEIGHT = 4.0


@dataclass(frozen=True)
class Option:
    """One storage choice for one tensor."""

    type: str
    bytes: int
    cost: float


# ---------------------------------------------------------------------------
# budgets
# ---------------------------------------------------------------------------
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")


def parse_size(text: str) -> int:
    """'3.9GB' -> 3_900_000_000, '3.5GiB' -> 3.5 * 2^30, '500MB', '123' (bytes).

    KB/MB/GB/TB are decimal, KiB/MiB/GiB/TiB binary; a bare K/M/G/T is binary
    (as in coreutils' `truncate -s 4G`). Case-insensitive.
    """
    m = _SIZE_RE.match(str(text))
    unit = m.group(2).upper() if m else None
    if not m or unit not in _UNITS:
        raise InputError(f"cannot read the size {text!r}: write a number and a unit such as 3.9GB, 500MB or 3.5GiB")
    value = float(m.group(1)) * _UNITS[unit]
    if value <= 0:
        raise InputError(f"the size {text!r} must be positive")
    return int(value)


def quantizable_weights(analyses: list[TensorAnalysis]) -> int:
    return sum(a.numel for a in analyses)


def budget_from_bpw(bpw: float, analyses_or_n) -> int:
    """Bytes for `bpw` bits per weight over the quantizable weights (an int count or the analyses)."""
    n = analyses_or_n if isinstance(analyses_or_n, int) else quantizable_weights(analyses_or_n)
    try:
        bits = float(bpw)
    except (TypeError, ValueError):
        bits = math.nan
    if not (math.isfinite(bits) and bits > 0):
        raise InputError(f"--bpw must be a positive number of bits per weight, got {bpw!r}")
    return int(bits * n / 8)


def budget_from_size(size_bytes: int, fixed_bytes: int = 0, metadata_bytes: int = 0) -> int:
    """Bytes left for the quantizable weights in a file of `size_bytes` (minus F32 tensors and metadata)."""
    budget = int(size_bytes) - int(fixed_bytes) - int(metadata_bytes)
    if budget <= 0:
        raise FitError(f"a size of {gib(size_bytes)} leaves nothing for the weights: the unquantized tensors take "
                       f"{gib(fixed_bytes)} and the metadata {gib(metadata_bytes)}; give a larger --size")
    return budget


def budget_from_target(target: str, n_layers: int, n_kv_heads: int, head_dim: int, ctx: int = DEFAULT_CTX,
                       fixed_bytes: int = 0, overhead_bytes: int = OVERHEAD_BYTES) -> int:
    """Bytes left for the quantizable weights on a device profile (edgeslim/targets.py):
    usable memory - KV cache at `ctx` - runtime overhead - unquantized tensors."""
    t = get_target(target)
    kv = kv_cache_bytes(n_layers, ctx, n_kv_heads, head_dim)
    budget = t.usable_bytes - kv - overhead_bytes - int(fixed_bytes)
    if budget <= 0:
        raise FitError(f"nothing is left for the weights on {t.name}: {gib(t.usable_bytes)} usable - KV cache "
                       f"{gib(kv)} at ctx {ctx} - overhead {gib(overhead_bytes)} - unquantized tensors "
                       f"{gib(fixed_bytes)}; choose a smaller --ctx or a bigger target")
    return budget


# ---------------------------------------------------------------------------
# costs
# ---------------------------------------------------------------------------
def nominal_rel_error(qtype: str) -> float:
    """Relative squared error model 4^-bpw (uniform quantizer: 6 dB per bit), for unmeasured types;
    a sparse type adds its pruned fraction (as if the pruned weights were average ones)."""
    sp = sparse_info(qtype)
    if sp:
        kept = 1.0 - sp.percent / 100 if not sp.pattern.m else sp.pattern.n / sp.pattern.m
        return (1.0 - kept) + kept * nominal_rel_error(sp.value)
    return 4.0 ** (-quant_info(qtype).bpw)


def tensor_costs(analyses: list[TensorAnalysis], signal: str, types) -> list[dict[str, float]]:
    """Per tensor {effective type: cost} under `signal` (module doc); InputError if errors are missing."""
    if signal not in SIGNALS:
        raise InputError(f"unknown allocation signal {signal!r}; use one of {', '.join(SIGNALS)}")
    if signal in ("sensitivity", "hybrid", "uniform"):
        missing = [a.name for a in analyses if not a.wsse]
        if missing:
            raise InputError(f"the {signal} signal needs measured errors but {missing[0]} has none: "
                             "analyze with measure=True or use --allocate erank")
    if signal == "erank":
        head = output_head(analyses)
        return [_erank_costs(a, types_for(types, a.name), HEAD_WEIGHT if a.name == head else 1.0) for a in analyses]
    w = _weighted_errors(analyses, types)
    if signal == "hybrid":
        fracs = [a.stats["erank_fraction"] for a in analyses]
        mean = sum(fracs) / len(fracs) if fracs else 1.0
        return [{t: e * f / mean for t, e in c.items()} if mean > 0 else c for c, f in zip(w, fracs)]
    return w


def output_head(analyses: list[TensorAnalysis]) -> str | None:
    """The tensor that makes the logits: output.weight, or token_embd.weight when the head is tied to it."""
    names = {a.name for a in analyses}
    for n in (TensorNames.OUTPUT, TensorNames.TOKEN_EMBD):
        if n in names:
            return n
    return None


def _erank_costs(a: TensorAnalysis, types, scale: float = 1.0) -> dict[str, float]:
    weight = scale * a.numel * a.stats.get("erank_fraction", 1.0)  # unmeasured (uniform): nominal model only
    energy = a.stats.get("energy", 0.0)
    out = {}
    for t in effective_types(types, a.shape[1]):
        if t in a.sse and energy > 0:
            out[t] = weight * a.sse[t] / energy
        else:
            out[t] = weight * nominal_rel_error(t)
    return out


def _weighted_errors(analyses: list[TensorAnalysis], types) -> list[dict[str, float]]:
    """wsse of the wanted types per tensor; uncalibrated tensors in a calibrated run scaled to the calibrated units."""
    acts = sorted(a.stats["act_mean"] for a in analyses if a.weighted and "act_mean" in a.stats)
    scale = acts[len(acts) // 2] if acts else 1.0
    out = []
    for a in analyses:
        errs, k = (a.wsse, 1.0) if a.weighted or not acts else (a.sse, scale)
        row = {}
        for t in effective_types(types_for(types, a.name), a.shape[1]):
            if t not in errs:
                raise InputError(f"{a.name}: the error of {t} was not measured; analyze with the same types "
                                 "as the allocation (family_types of the chosen family)")
            row[t] = errs[t] * k
        out.append(row)
    return out


def tensor_options(a: TensorAnalysis, costs: dict[str, float]) -> list[Option]:
    """(type, bytes, cost) per effective type, sorted by bytes."""
    return sorted((Option(t, tensor_bytes(t, a.shape), float(c)) for t, c in costs.items()),
                  key=lambda o: (o.bytes, o.cost))


# ---------------------------------------------------------------------------
# knapsack
# ---------------------------------------------------------------------------
def lower_hull(options: list[Option]) -> list[Option]:
    """The options on the lower convex hull of (bytes, cost), by increasing bytes and decreasing cost."""
    pts: list[Option] = []
    for o in sorted(options, key=lambda o: (o.bytes, o.cost)):
        if pts and (o.bytes == pts[-1].bytes or o.cost >= pts[-1].cost):
            continue  # same size but no cheaper, or bigger and no better
        while len(pts) >= 2 and _cross(pts[-2], pts[-1], o) <= 0:
            pts.pop()  # pts[-1] lies on or above the chord pts[-2] -> o
        pts.append(o)
    return pts


def _cross(a: Option, b: Option, c: Option) -> float:
    """> 0 when b lies strictly below the chord a -> c (a left turn)."""
    return (b.bytes - a.bytes) * (c.cost - a.cost) - (b.cost - a.cost) * (c.bytes - a.bytes)


def min_bytes(options: dict[str, list[Option]]) -> int:
    return sum(min(o.bytes for o in opts) for opts in options.values())


def _check_fit(options: dict[str, list[Option]], budget: int) -> None:
    need = min_bytes(options)
    if need > budget:
        smallest = sorted({min(opts, key=lambda o: o.bytes).type for opts in options.values()})
        raise FitError(f"the quantizable weights need at least {gib(need)} ({need:,} bytes) at the smallest types "
                       f"({', '.join(smallest)}) but the budget is {gib(budget)} ({budget:,} bytes); "
                       "raise --bpw/--size, choose a bigger target or a smaller --ctx, or a smaller model")


def _lagrangian(options: dict[str, list[Option]], budget: int):
    """Steps 1-3: ({tensor: hull option}, bytes left, reduction per byte of the first step that did not fit)."""
    _check_fit(options, budget)
    hulls = {n: lower_hull(o) for n, o in options.items()}
    pos = {n: 0 for n in hulls}
    left = budget - sum(h[0].bytes for h in hulls.values())
    order = {n: i for i, n in enumerate(hulls)}
    heap: list[tuple[float, int, str]] = []

    def push(n: str) -> None:
        h, i = hulls[n], pos[n]
        if i + 1 < len(h):
            gain = (h[i].cost - h[i + 1].cost) / (h[i + 1].bytes - h[i].bytes)
            heapq.heappush(heap, (-gain, order[n], n))

    for n in hulls:
        push(n)
    next_gain = 0.0
    while heap:
        neg_gain, _, n = heap[0]
        h, i = hulls[n], pos[n]
        step = h[i + 1].bytes - h[i].bytes
        if step > left:
            next_gain = -neg_gain
            break
        heapq.heappop(heap)
        left -= step
        pos[n] = i + 1
        push(n)
    return {n: hulls[n][pos[n]] for n in hulls}, left, next_gain


def greedy_allocate(options: dict[str, list[Option]], budget: int) -> dict[str, Option]:
    """Convex-hull greedy (module doc): {tensor: chosen option}, total bytes <= budget."""
    chosen, left, _ = _lagrangian(options, budget)
    best = None  # step 4: (reduction, tensor, option)
    for n, opts in options.items():
        cur = chosen[n]
        for o in opts:
            red = cur.cost - o.cost
            if red > 0 and o.bytes - cur.bytes <= left and (best is None or red > best[0]):
                best = (red, n, o)
    if best is not None:
        chosen[best[1]] = best[2]
    return chosen


def lower_bound(options: dict[str, list[Option]], budget: int) -> float:
    """The LP-relaxation optimum: no choice within the budget has a smaller total cost."""
    chosen, left, next_gain = _lagrangian(options, budget)
    return sum(o.cost for o in chosen.values()) - next_gain * left


def exact_allocate(options: dict[str, list[Option]], budget: int) -> dict[str, Option]:
    """Optimal choice by dynamic programming over the Pareto frontier of (bytes, cost) partial sums.

    Exponential in the worst case: for tests and small instances only.
    """
    _check_fit(options, budget)
    names = list(options)
    frontier: list[tuple[int, float, tuple[int, ...]]] = [(0, 0.0, ())]
    for n in names:
        cand = [(b + o.bytes, c + o.cost, ch + (i,)) for b, c, ch in frontier
                for i, o in enumerate(options[n]) if b + o.bytes <= budget]
        cand.sort(key=lambda s: (s[0], s[1]))
        frontier = []
        for s in cand:
            if not frontier or s[1] < frontier[-1][1]:
                frontier.append(s)
    best = min(frontier, key=lambda s: s[1])
    return {n: options[n][i] for n, i in zip(names, best[2])}


def uniform_ladder(types, family: str):
    """`types` (one ladder or {name: ladder}) cut to the family's uniform ladder (targets.LADDERS,
    F16 on top; a sparse type counts by its value type), keeping the ladders' steps aligned."""
    ladder = LADDERS.get(family)

    def keep(ts):
        values = [sparse_info(t).value if sparse_info(t) else t for t in ts]
        return tuple(t for t, v in zip(ts, values) if ladder is None or v in ladder or v == "F16") or tuple(ts)

    return {n: keep(ts) for n, ts in types.items()} if isinstance(types, dict) else keep(types)


def uniform_allocate(options: dict[str, list[Option]], analyses: list[TensorAnalysis], types,
                     budget: int) -> tuple[str, dict[str, Option]]:
    """The best single step of the ladder (block fallbacks applied per tensor) whose total fits; with
    per-tensor ladders ({name: ladder}, e.g. pruned tensors' sparse types) the same step of each."""
    _check_fit(options, budget)
    by_name = {a.name: a for a in analyses}
    ladder = [(sparse_info(t).value if sparse_info(t) else t) for t in types_for(types, analyses[0].name)]
    for k in reversed(range(len(ladder))):
        chosen = {}
        for n, opts in options.items():
            eff = effective_types([types_for(types, n)[k]], by_name[n].shape[1])[0]
            chosen[n] = next(o for o in opts if o.type == eff)
        if sum(o.bytes for o in chosen.values()) <= budget:
            return ladder[k], chosen
    raise FitError(f"no single type of {', '.join(ladder)} fits {gib(budget)} ({budget:,} bytes): even "
                   f"{ladder[0]} needs {gib(sum(o.bytes for o in chosen.values()))}; "
                   "raise the budget or use --allocate sensitivity")


# ---------------------------------------------------------------------------
# the result
# ---------------------------------------------------------------------------
@dataclass
class Allocation:
    """The chosen type per tensor and what was predicted for it."""

    signal: str
    family: str
    budget_bytes: int
    choices: dict[str, Option]
    analyses: dict[str, TensorAnalysis]
    uniform_type: str | None = None
    lower_bound: float | None = None  # LP bound on the optimal total cost (knapsack signals)

    @property
    def total_bytes(self) -> int:
        return sum(o.bytes for o in self.choices.values())

    @property
    def total_cost(self) -> float:
        return sum(o.cost for o in self.choices.values())

    @property
    def bpw(self) -> float:
        n = sum(a.numel for a in self.analyses.values())
        return 8.0 * self.total_bytes / n if n else 0.0

    def tensor_types(self) -> dict[str, str]:
        """{tensor: type} for `edgeslim.tensor_types`."""
        return {n: o.type for n, o in self.choices.items()}

    def to_dict(self) -> dict:
        """JSON-able record for `edgeslim.report`: per tensor type, bytes, predicted error and stats."""
        tensors = {}
        for n, o in self.choices.items():
            a = self.analyses[n]
            s = a.stats
            tensors[n] = {"type": o.type, "bytes": o.bytes, "error": _sig(o.cost), "rel_rms": _sig(a.rel_rms(o.type)),
                          "erank": _sig(s.get("erank")), "erank_fraction": _sig(s.get("erank_fraction")),
                          "kurtosis": _sig(s.get("kurtosis")), "outlier_share": _sig(s.get("outlier_share"))}
        return {"signal": self.signal, "family": self.family, "uniform_type": self.uniform_type,
                "calibrated": any(a.weighted for a in self.analyses.values()),
                "budget_bytes": self.budget_bytes, "total_bytes": self.total_bytes, "bpw": round(self.bpw, 4),
                "predicted_error": _sig(self.total_cost), "error_lower_bound": _sig(self.lower_bound),
                "tensors": tensors}


def allocate(analyses: list[TensorAnalysis], budget_bytes: int, signal: str = DEFAULT_SIGNAL, family: str = "ggml",
             group: int = 64, top_f16: bool = True, types=None) -> Allocation:
    """A type per tensor minimizing the signal's total cost with total bytes <= budget_bytes.

    `types` (smallest first) overrides the family's ladder family_types(family, group, top_f16); a dict
    {tensor: ladder} gives each tensor its own (pruned tensors: sparse types).
    """
    if types is None:
        types = family_types(family, group, top_f16)
    types = dict(types) if isinstance(types, dict) else tuple(types)
    if not analyses:
        return Allocation(signal, family, int(budget_bytes), {}, {})
    names = [a.name for a in analyses]
    if len(set(names)) != len(names):
        raise InputError("allocate got the same tensor twice; pass each quantizable tensor once")
    need, note = minimum_note({a.name: a.shape for a in analyses}, types)
    if need > budget_bytes:
        raise FitError(f"the budget is {gib(budget_bytes)} ({int(budget_bytes):,} bytes) but {note}; raise "
                       "--bpw/--size, choose a bigger target or a smaller --ctx, or a smaller model")
    cost_signal = signal
    if signal == "uniform":  # costs only for the record: measured when available
        cost_signal = "sensitivity" if all(a.wsse for a in analyses) else "erank"
    costs = tensor_costs(analyses, cost_signal, types)
    options = {a.name: tensor_options(a, c) for a, c in zip(analyses, costs)}
    by_name = {a.name: a for a in analyses}
    if signal == "uniform":  # one type of the family's uniform ladder (Q2_K..Q8_0), not every candidate
        t, chosen = uniform_allocate(options, analyses, uniform_ladder(types, family), int(budget_bytes))
        return Allocation(signal, family, int(budget_bytes), chosen, by_name, uniform_type=t)
    chosen = greedy_allocate(options, int(budget_bytes))
    return Allocation(signal, family, int(budget_bytes), chosen, by_name,
                      lower_bound=lower_bound(options, int(budget_bytes)))


def _sig(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return float(f"{x:.4g}") if math.isfinite(x) else None
