"""The conversion, as a chain of passes: source -> measure -> plan -> transform -> write.

    convert("path/to/hf-folder", "out.gguf", quant="Q4_K")            # one type for every matrix
    convert("org/model", "out.gguf", target="m2-8gb", ctx=4096)      # a type per matrix, to fit a device
    convert("path/to/hf-folder", "out.gguf", bpw=4.5, gptq=True)

This module is the one orchestrator; each pass is a module with one job that
receives what it needs and returns a value (none imports this module):

1. source (source.py): the HF folder, hub id or F16/F32 GGUF as a SourceModel,
   whose tensors load one at a time.
2. measure (measure.py): whether and on what to calibrate, the calibration
   importance (mean x^2 per input column, calibrate.py), and for a budget the
   analysis of every matrix (analyze.py).
3. plan (plan.py, budget.py): a type per tensor. `--quant` (or nothing: F16)
   gives every 2-D weight matrix one type, with block fallbacks;
   `--target`, `--bpw` or `--size` set a byte budget (FitError before any
   work when even the smallest types do not fit) that the allocator
   (allocate.py) fills with a type per matrix.
4. transform (transform.py, gptq_pass.py): each planned tensor in its stored
   form, in file order, one at a time: round-to-nearest (importance-weighted
   when calibrated) or GPTQ, which quantizes each decoder layer inside a
   second calibration pass (one layer and its Hessians in memory).
5. write (write.py): header, tensors as the transform yields them, report;
   a temp file renamed into place on success.

GPTQ is on by default for a budget whenever calibration runs (`use_gptq`);
`--no-gptq` turns it off, `--gptq` asks for it with `--quant` too.

Memory: tensors are loaded (positioned reads, no mmap), transformed, quantized,
measured (dequantized ~1M weights at a time) and written one at a time, so peak
RSS is about the largest tensor's float32 copy plus its quantized bytes and the
quantizer's temporaries (measured: 270 MiB for a 156M-parameter F16 checkpoint
whose largest tensor is 131 MB in float32). The analysis pass streams the same
way; calibration and GPTQ hold one decoder layer (and its Hessians) at a time.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgeslim.errors import FitError, InputError
from edgeslim.inspect import allocation_summary
from edgeslim.targets import DEFAULT_CTX, Target, get_target

from .allocate import DEFAULT_SIGNAL
from .analyze import family_types
from .budget import candidate_types, make_budget, matrices, min_bytes, plan_to_budget
from .arch import arch_for_config
from .gptq_pass import gptq_stream
from .hf import read_config
from .measure import (Importance, hf_folder, analyze_matrices, calibration_for, calibration_record, measure_importance,
                      measure_owl)
from .model import SourceModel
from .output_guard import refuse_source_overwrite
from .plan import PlanResult, note_fallbacks, plan_uniform, resolve_quant
from .prune import Pruning, make_pruning, note_sparse, prune_record
from .report import build_report
from .source import open_source
from .transform import round_to_nearest
from .widen import widen_refusal, widening_for, write_widened
from .write import prune_key, write_gguf

__all__ = ["convert", "open_source", "conversion_mode", "use_gptq", "BUDGETS"]

DEFAULT_CALIB_TOKENS = 4096  # as calibrate.DEFAULT_CALIB_TOKENS (not imported: that module is heavier)
GROUPS = (32, 64)
BUDGETS = ("target", "bpw", "size")


def convert(src: str, out: str | Path, quant: str | None = None, family: str | None = None,
            target: str | None = None, ctx: int = DEFAULT_CTX, bpw: float | None = None,
            size: str | int | None = None, allocate: str | None = None, calib=None,
            calib_tokens: int = DEFAULT_CALIB_TOKENS, gptq: bool | None = None, group: int = 64,
            force: bool = False, progress: bool | None = None, prune: str | None = None,
            sparsity: float | None = None, pattern: str | None = None, owl: float | None = None,
            prune_choice: bool = False, widen: bool | None = None) -> dict:
    """Convert `src` to the GGUF file `out`; returns the report stored in `edgeslim.report`.

    quant: one type for every matrix (default F16 when no budget is given).
    target / bpw / size: a budget (device profile, bits per weight over the matrices,
    or file size such as "3.9GB" or a byte count); the types are chosen per matrix by
    the `allocate` signal (erank (default), sensitivity, uniform, hybrid) within
    `family` (ggml, affine with `group` 32 or 64). calib: a text file to calibrate on,
    None (automatic: see convert/measure.py), or False (never). gptq: GPTQ rounding
    (needs an HF folder and torch): True, False, or None (automatic, `use_gptq`).
    prune: magnitude, wanda or sparsegpt (convert/prune.py, sparsegpt.py): the decoder
    blocks' matrices are pruned to `sparsity` (default 0.5) in `pattern` (unstructured
    (default), 2:4, 4:8) and stored in sparse types (edgeslim/quants/sparse.py); owl: OWL's
    lambda for per-layer sparsity (unstructured); prune_choice (with a budget): the allocator
    chooses per matrix between the dense types and the sparse ones by measured error per byte.
    widen (with a budget; an HF folder of a Llama-shaped family): zero-pad the hidden (and FFN)
    width to a multiple of 256 so K and IQ types fit every row (convert/widen.py, exact):
    None (automatic) widens when the budget is below the unwidened model's smallest types,
    True always, False never.
    FitError, before anything is written, when even the smallest types do not fit.
    """
    out = _check_output(out, force)
    refuse_source_overwrite(src, out)
    if ctx <= 0:
        raise InputError(f"--ctx must be a positive number of tokens, got {ctx}")
    mode = conversion_mode(quant, target, bpw, size, allocate, group, gptq)
    qtype, family = resolve_quant(quant, family, group)
    req = _Request(mode, family, group, allocate or DEFAULT_SIGNAL, qtype, bpw if mode == "bpw" else size,
                   get_target(target) if target else None, ctx, progress,
                   make_pruning(prune, sparsity, pattern, owl, family, prune_choice))
    _check_request(req, widen)
    model = open_source(src)
    scratch = None
    try:
        if mode in BUDGETS:
            src, model, scratch = _fit_budget(src, model, req, widen, out.parent)
        return _run(src, model, out, req, calib, calib_tokens, gptq, force)
    finally:
        model.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _run(src: str, model: SourceModel, out: Path, req: "_Request", calib, calib_tokens: int, gptq: bool | None,
         force: bool) -> dict:
    """Passes 2-5 of the module doc on an open model: calibrate, plan, transform, write."""
    budget = req.mode in BUDGETS
    cal = calibration_for(src, model, calib, calib_tokens, req.signal if budget else None, bool(gptq),
                          req.pruning.method if req.pruning else None)
    gptq = use_gptq(gptq, req.mode, cal, req.pruning)
    planned, imp = _plan_budget(model, cal, req) if budget else _plan_uniform(model, cal, req)
    plan = planned.plan
    extra = dict(planned.extra, calibration=calibration_record(cal, imp), gptq=bool(gptq),
                 **({"widened": req.widened} if req.widened else {}))
    if req.pruning is not None:
        extra["prune"] = prune_record(req.pruning, plan)
        note_sparse(plan)
    method = req.pruning.method if req.pruning else "magnitude"
    converted = gptq_stream(plan, cal, imp.by_name, model.n_layers, method) if gptq else \
        round_to_nearest(plan, imp.by_name, method)
    return write_gguf(out, model, plan, planned.fit, req.family, extra, converted, force, req.progress,
                      planned.report_size)


def _budget_error(model: SourceModel, req: "_Request") -> FitError | None:
    """The FitError `make_budget` raises for this model and request, None when it fits."""
    types = family_types(req.family, req.group, top_f16=req.mode != "target", lowest=req.lowest)
    mats, fixed = matrices(model)
    try:
        make_budget(model, mats, fixed, candidate_types(mats, types, req.pruning), req.family, req.mode, req.value,
                    req.tgt, req.ctx, prune_key(req.pruning.record() if req.pruning else None))
    except FitError as err:
        return err
    return None


def _fit_budget(src: str, model: SourceModel, req: "_Request", widen: bool | None, where: Path):
    """Make the budget reachable. When the smallest types do not fit (or `widen` is True), a
    Llama-shaped HF model is widened (convert/widen.py); the IQ1 types join the ladder
    (`req.lowest`) when even that does not fit. Returns (source, its SourceModel, the scratch
    folder to remove or None): the widened folder and model (the given model closed, the widening
    recorded in `req.widened`), or what was given; FitError when nothing fits."""
    err = _budget_error(model, req)
    if err is None and widen is not True:
        return src, model, None
    folder = hf_folder(src)
    config = read_config(folder) if folder is not None else None
    w = widening_for(config, arch_for_config(config)) if config is not None and widen is not False else None
    if w is None:
        if err is None:
            why = widen_refusal(config, arch_for_config(config)) if config else "it is a GGUF file"
            raise InputError(f"--widen: {src} cannot be widened: {why}")
        _with_lowest(model, req, err)
        return src, model, None
    scratch = Path(tempfile.mkdtemp(prefix=".edgeslim-widen-", dir=where))
    try:
        write_widened(folder, scratch, arch_for_config(config), w, model.name)
        wide = open_source(str(scratch))
        wide.name, wide.source = model.name, model.source
        n0, n1 = (sum(s.n_elements for s in matrices(m)[0]) for m in (model, wide))
        if req.mode == "bpw":
            req.value = round(float(req.value) * n0 / n1, 4)
        if _budget_error(wide, req) is not None:
            try:
                _with_lowest(wide, req, err, f"widened ({w.describe()})", n0)
            finally:
                wide.close()
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    print(f"widening {model.name} ({w.describe()}, zero-padded, exact) so K and IQ types fit every row"
          + (f": --bpw over the original {n0:,} matrix weights is {req.value:.3f} over the widened {n1:,}"
             if req.mode == "bpw" else ""), file=sys.stderr)
    req.widened = w.record()
    model.close()
    return str(scratch), wide, scratch


def _with_lowest(model: SourceModel, req: "_Request", err: FitError | None, how: str = "", n0: int = 0) -> None:
    """Let the IQ1 types in (ggml family) when the budget needs them; FitError when even they do not fit
    (`how`: the widening tried, `n0`: the original model's matrix weights, for a --bpw floor)."""
    req.lowest = req.family == "ggml"
    err2 = _budget_error(model, req)
    if err2 is None:
        print("the budget needs the IQ1 types: IQ1_S and IQ1_M join the candidates", file=sys.stderr)
        return
    if not how:
        raise err2
    why = str(err2)
    if req.mode == "bpw":
        mats = matrices(model)[0]
        need, _ = min_bytes(mats, candidate_types(mats, family_types(req.family, req.group, lowest=req.lowest),
                                                  req.pruning))
        why = f"its smallest types need {8 * need / n0:.2f} bits per original matrix weight"
    raise FitError(f"{f'{err}; ' if err else ''}{how} it still does not fit: {why}")


def _check_request(req: "_Request", widen: bool | None) -> None:
    """One-line errors for options that need a budget."""
    if req.pruning is not None and req.pruning.choice and (req.mode not in BUDGETS or req.signal == "uniform"):
        raise InputError("--prune-choice lets the allocator choose dense or sparse per matrix: give --target, "
                         "--bpw or --size with a measuring --allocate signal")
    if widen is not None and req.mode not in BUDGETS:
        raise InputError("--widen pads the model so a budget's smaller types fit; add --target, --bpw or --size")


@dataclass
class _Request:
    """What the user asked for, checked: the mode and everything the plan passes read."""

    mode: str
    family: str
    group: int
    signal: str
    qtype: str | None
    value: object  # --bpw or --size
    tgt: Target | None
    ctx: int
    progress: bool | None
    pruning: Pruning | None
    lowest: bool = False  # the IQ1 types join the ladder (pipeline._fit_budget)
    widened: dict | None = None  # the report's record of a widening (pipeline._fit_budget)


def _plan_budget(model: SourceModel, cal, req: _Request) -> tuple[PlanResult, Importance]:
    """Budget (FitError before any work; with OWL after its measuring), measure, allocate; prints the
    fit report and the allocation."""
    types = family_types(req.family, req.group, top_f16=req.mode != "target", lowest=req.lowest)
    mats, fixed = matrices(model)
    imp = None
    if req.pruning is not None and req.pruning.owl is not None:
        imp = measure_importance(cal)
        req.pruning.layer_sparsity = measure_owl(mats, req.pruning, imp.by_name)
    cands = candidate_types(mats, types, req.pruning)
    budget = make_budget(model, mats, fixed, cands, req.family, req.mode, req.value, req.tgt, req.ctx,
                         prune_key(req.pruning.record() if req.pruning else None))
    imp = imp or measure_importance(cal)
    method = req.pruning.method if req.pruning else "wanda"
    analyses = analyze_matrices(mats, cands, imp.by_name, req.signal, req.progress, method)
    res = plan_to_budget(model, analyses, budget, req.signal, req.family, req.group, cands, req.tgt, req.ctx)
    head = build_report(model, res.plan, res.fit, req.family, {},
                        dict(res.extra, calibration=calibration_record(cal, imp)))
    print(res.fit.text(), file=sys.stderr)
    print("\n".join(allocation_summary(head, indent="  ")), file=sys.stderr)
    return res, imp


def _plan_uniform(model: SourceModel, cal, req: _Request) -> tuple[PlanResult, Importance]:
    """One type for all (prints the fit report and block fallbacks), then the calibration importance
    (before the plan with OWL, whose per-layer sparsity it needs)."""
    imp = None
    if req.pruning is not None and req.pruning.owl is not None:
        imp = measure_importance(cal)
        req.pruning.layer_sparsity = measure_owl(matrices(model)[0], req.pruning, imp.by_name)
    plan, fit = plan_uniform(model, req.qtype, req.family, req.tgt, req.ctx, req.pruning)
    print(fit.text(), file=sys.stderr)
    note_fallbacks(plan)
    return PlanResult(plan, fit, {"mode": req.mode}), imp or measure_importance(cal)


def use_gptq(gptq: bool | None, mode: str, cal, pruning: Pruning | None = None) -> bool:
    """GPTQ or plain (importance-weighted) rounding: as asked, else on for a budget whenever
    calibration runs (an HF folder with torch installed, calibration not refused). SparseGPT
    prunes inside that pass, so `--prune sparsegpt` turns it on (and refuses --no-gptq).

    Why on by default: at 4.0 bpw on the reference model GPTQ took the ΔPPL from 1.04x
    llama.cpp+imatrix's to 0.62x, and KL from 0.70x to 0.40x (docs/quality-ref.md). Its cost
    grows with the matrices' width: about 2.3 minutes per decoder layer of a 7B model on
    2 cores (docs/benchmarks.md), which `--no-gptq` saves.
    """
    if pruning is not None and pruning.method == "sparsegpt":
        if gptq is False:
            raise InputError("--prune sparsegpt prunes inside the GPTQ pass; drop --no-gptq "
                             "(or prune with magnitude or wanda)")
        return True
    if gptq is not None:
        return bool(gptq)
    return mode in BUDGETS and cal is not None


def conversion_mode(quant, target, bpw, size, allocate, group, gptq) -> str:
    """'quant', 'default' (F16), or the budget kind: 'target', 'bpw', 'size'; one-line errors for clashes."""
    from .allocate import SIGNALS

    if bpw is not None and size is not None:
        raise InputError("--bpw and --size both set the budget; give one of them")
    if quant is not None and (bpw is not None or size is not None):
        raise InputError("--quant gives every matrix one type, --bpw/--size let edgeslim choose per matrix; "
                         "give one of them")
    if target is not None and (bpw is not None or size is not None):
        raise InputError("--target and --bpw/--size both set the budget; give one of them")
    if allocate is not None and allocate not in SIGNALS:
        raise InputError(f"unknown --allocate {allocate!r}; use one of {', '.join(SIGNALS)}")
    if group not in GROUPS:
        raise InputError(f"--group must be one of {', '.join(map(str, GROUPS))}, got {group}")
    if quant is not None:
        mode = "quant"
    elif target is not None:
        mode = "target"
    elif bpw is not None:
        mode = "bpw"
    elif size is not None:
        mode = "size"
    else:
        mode = "default"
    if allocate is not None and mode not in BUDGETS:
        raise InputError("--allocate chooses types under a budget: add --target, --bpw or --size "
                         "(or drop --allocate)")
    if gptq and mode == "default":
        raise InputError("--gptq rounds to a quantized type: add --quant, --target, --bpw or --size")
    return mode


def _check_output(out, force: bool) -> Path:
    out = Path(out)
    if out.is_dir():
        raise InputError(f"-o {out} is a folder; give the output file's name, e.g. {out / 'model.gguf'}")
    if out.exists() and not force:
        raise InputError(f"{out} already exists; pass --force to overwrite it or choose another -o")
    return out
