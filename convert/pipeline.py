"""The conversion: open a source, choose types (and check the fit), stream tensors out.

    convert("path/to/hf-folder", "out.gguf", quant="Q4_K")            # one type for every matrix
    convert("org/model", "out.gguf", target="m2-8gb", ctx=4096)      # a type per matrix (convert/smart.py)
    convert("path/to/hf-folder", "out.gguf", bpw=4.5, gptq=True)

`--quant` (or nothing: F16) keeps the uniform path: every 2-D weight matrix gets
the type, with block fallbacks. `--target`, `--bpw` or `--size` hand the choice
to convert/smart.py: measure every matrix, allocate types to the budget, then
write. Calibration (convert/smart.py's `calibration_for`) weights the RTN
scale searches with each matrix's input importance, and GPTQ quantizes
each decoder layer inside a second calibration pass (convert/gptq_pass.py).
GPTQ is on by default for a budget (`--target`, `--bpw`, `--size`) whenever
calibration runs (see `use_gptq`); `--no-gptq` turns it off, `--gptq` asks
for it with `--quant` too.

Memory: tensors are loaded (positioned reads, no mmap), transformed, quantized,
measured (dequantized ~1M weights at a time) and written one at a time, so peak
RSS is about the largest tensor's float32 copy plus its quantized bytes and the
quantizer's temporaries (measured: 270 MiB for a 156M-parameter F16 checkpoint
whose largest tensor is 131 MB in float32). The analysis pass streams the same
way; calibration and GPTQ hold one decoder layer (and its Hessians) at a time.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from edgeslim import __version__
from edgeslim.errors import InputError
from edgeslim.gguf_write import GGUFOut
from edgeslim.quants import QTensor, dequantize, quantize
from edgeslim.tables import Keys, quant_info
from edgeslim.targets import DEFAULT_CTX, Fit, Target, get_target, kv_cache_bytes, pick_type, require_fit

from .allocate import DEFAULT_SIGNAL
from .gguf_source import is_gguf, open_gguf
from .header import add_header
from .hf import open_hf
from .model import SourceModel, TensorSpec
from .notes import note
from .output_guard import refuse_source_overwrite
from .plan import (DEFAULT_QUANT, Planned, make_plan, matrix_bpw, plan_bytes, resolve_quant, type_histogram,
                   written_summary)

_LONG = 200_000_000  # weights: above this a progress bar is shown even without a TTY
DEFAULT_CALIB_TOKENS = 4096  # as calibrate.DEFAULT_CALIB_TOKENS (not imported: that module is heavier)
GROUPS = (32, 64)


def open_source(src: str) -> SourceModel:
    """An HF folder, hub id, or F32/F16/BF16 GGUF file as a SourceModel."""
    path = Path(src)
    if is_gguf(path):
        return open_gguf(path)
    if path.is_file():
        raise InputError(f"{src} is a file but not a GGUF model; pass a Hugging Face model folder or a .gguf file")
    return open_hf(src)


def convert(src: str, out: str | Path, quant: str | None = None, family: str | None = None,
            target: str | None = None, ctx: int = DEFAULT_CTX, bpw: float | None = None,
            size: str | int | None = None, allocate: str | None = None, calib=None,
            calib_tokens: int = DEFAULT_CALIB_TOKENS, gptq: bool | None = None, group: int = 64,
            force: bool = False, progress: bool | None = None) -> dict:
    """Convert `src` to the GGUF file `out`; returns the report stored in `edgeslim.report`.

    quant: one type for every matrix (default F16 when no budget is given).
    target / bpw / size: a budget (device profile, bits per weight over the matrices,
    or file size such as "3.9GB" or a byte count); the types are chosen per matrix by
    the `allocate` signal (erank (default), sensitivity, uniform, hybrid) within
    `family` (ggml, affine with `group` 32 or 64). calib: a text file to calibrate on,
    None (automatic: see convert/smart.py), or False (never). gptq: GPTQ rounding
    (needs an HF folder and torch): True, False, or None (automatic, `use_gptq`). FitError, before anything is written, when even the
    smallest types do not fit.
    """
    out = _check_output(out, force)
    refuse_source_overwrite(src, out)
    if ctx <= 0:
        raise InputError(f"--ctx must be a positive number of tokens, got {ctx}")
    mode = conversion_mode(quant, target, bpw, size, allocate, group, gptq)
    tgt = get_target(target) if target else None
    qtype, family = resolve_quant(quant, family, group)
    model = open_source(src)
    try:
        from .smart import calibration_for, plan_to_budget

        signal = allocate or DEFAULT_SIGNAL
        cal = calibration_for(src, model, calib, calib_tokens, signal if mode in BUDGETS else None, bool(gptq))
        gptq = use_gptq(gptq, mode, cal)
        if mode in BUDGETS:
            res = plan_to_budget(model, family, group, signal, mode, bpw if mode == "bpw" else size, tgt, ctx,
                                 cal, progress)
            return write(model, res.plan, out, res.fit, family, force, progress, res.extra, cal, gptq,
                         res.report_size)
        fit = choose_type(model, qtype, family, tgt, ctx)
        print(fit.text(), file=sys.stderr)
        plan = make_plan(model.tensors, fit.qtype)
        note_fallbacks(plan)
        if cal is not None:
            cal.run_importance()
        return write(model, plan, out, fit, family, force, progress, {"mode": mode}, cal, gptq)
    finally:
        model.close()


BUDGETS = ("target", "bpw", "size")


def use_gptq(gptq: bool | None, mode: str, cal) -> bool:
    """GPTQ or plain (importance-weighted) rounding: as asked, else on for a budget whenever
    calibration runs (an HF folder with torch installed, calibration not refused).

    Why on by default: at 4.0 bpw on the reference model GPTQ took the ΔPPL from 1.04x
    llama.cpp+imatrix's to 0.62x, and KL from 0.70x to 0.40x (docs/quality-ref.md). Its cost
    grows with the matrices' width: about 2.3 minutes per decoder layer of a 7B model on
    2 cores (docs/benchmarks.md), which `--no-gptq` saves.
    """
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


def note_fallbacks(plan: list[Planned]) -> None:
    """One stderr note per (row length, requested type, used type), like llama.cpp's warnings."""
    groups: dict[tuple[int, str, str], list[str]] = {}
    for p in plan:
        if p.fallback_from:
            groups.setdefault((int(p.spec.shape[-1]), p.fallback_from, p.qtype), []).append(p.spec.name)
    for (row, asked, used), names in groups.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        note(f"rows of {row} are not a multiple of {asked}'s block of {quant_info(asked).block}; "
             f"{len(names)} tensor(s) use {used} instead ({shown})")


def choose_type(model: SourceModel, qtype: str | None, family: str, tgt: Target | None, ctx: int) -> Fit:
    """The type to write and its fit: given, picked for the target, or the default."""
    kv = kv_cache_bytes(model.n_layers, ctx, model.n_kv_heads, model.head_dim)

    def weights_for(q: str) -> int:
        return plan_bytes(model.tensors, q)

    if qtype is None and tgt is not None:
        return pick_type(family, weights_for, kv, tgt, ctx)
    q = qtype or DEFAULT_QUANT
    fit = Fit(q, ctx, weights_for(q), kv, tgt)
    require_fit(fit, family, weights_for)
    return fit


def report_size(head: dict, plan: list[Planned], gptq: bool) -> int:
    """Bytes to reserve for `edgeslim.report`: the report known before writing plus room for
    the measured errors (a name and a number per quantized tensor, twice with GPTQ)."""
    per = sum(len(p.spec.name.encode()) + 40 for p in plan if p.quantized)
    return len(json.dumps(head, separators=(",", ":")).encode()) + per * (2 if gptq else 1) + 256


def write(model: SourceModel, plan: list[Planned], out: Path, fit: Fit, family: str, force: bool,
          progress: bool | None, extra: dict | None = None, cal=None, gptq: bool = False,
          min_report_size: int = 0) -> dict:
    """Stream the planned tensors into `out` (temp file + rename) and return the report.

    cal: a smart.Calibration (importance-weighted RTN; GPTQ's Hessians when `gptq`)."""
    extra = dict(extra or {}, calibration=cal.to_dict() if cal is not None else None, gptq=bool(gptq))
    head = build_report(model, plan, fit, family, {}, extra)
    importance = cal.importance if cal is not None else {}
    with GGUFOut(out, arch=model.gguf_arch, force=force) as g:
        add_header(g, model, plan, fit, family, max(min_report_size, report_size(head, plan, gptq)))
        g.begin()
        bar = progress_bar(sum(p.spec.n_elements for p in plan), progress)
        if gptq:
            from .gptq_pass import stream_gptq

            errors, out_errors = stream_gptq(g, plan, cal, model.n_layers, bar, write_tensor)
        else:
            errors, out_errors = stream(g, plan, bar, importance), {}
        if bar is not None:
            bar.close()
        report = build_report(model, plan, fit, family, errors, extra, out_errors)
        g.fill_string(Keys.ES_REPORT, json.dumps(report, separators=(",", ":")))
    total = sum(p.nbytes for p in plan)
    print(f"edgeslim: wrote {out} ({total / 2**20:.1f} MiB of weights, {len(plan)} tensors; matrices: "
          f"{written_summary(plan)})", file=sys.stderr)
    return report


def stream(g: GGUFOut, plan: list[Planned], bar=None, importance: dict | None = None) -> dict[str, float]:
    """Load, quantize (RTN, importance-weighted where given), measure and write each tensor in plan
    order; {name: relative RMS error}. `bar`: a tqdm bar, or a bool/None as for `progress`."""
    own = not hasattr(bar, "update")
    if own:
        bar = progress_bar(sum(p.spec.n_elements for p in plan), bar)
    errors: dict[str, float] = {}
    for p in plan:
        e = write_tensor(g, p, (importance or {}).get(p.spec.name), bar)
        if e is not None:
            errors[p.spec.name] = e
    if own and bar is not None:
        bar.close()
    return errors


def load_checked(spec: TensorSpec) -> np.ndarray:
    """The tensor as float32 (numpy order), with one-line errors for a damaged checkpoint."""
    w = spec.load()
    if tuple(w.shape) != tuple(spec.shape):
        raise InputError(f"{spec.name}: the checkpoint's data has shape {w.shape}, its header says {spec.shape}; "
                         "re-download the model")
    if not np.isfinite(w).all():
        raise InputError(f"{spec.name} contains NaN or infinite weights; the checkpoint is damaged")
    return w


def write_tensor(g: GGUFOut, p: Planned, importance: np.ndarray | None = None, bar=None) -> float | None:
    """Round-to-nearest one planned tensor into `g`; its relative RMS error (None for F32)."""
    if bar is not None:
        bar.set_postfix_str(p.spec.name, refresh=False)
    w = load_checked(p.spec)  # float32, numpy order
    err = None
    if p.qtype == "F32":
        g.write(p.spec.name, np.ascontiguousarray(w, dtype=np.float32))
    else:
        q = quantize(w, p.qtype, importance)
        g.write(p.spec.name, q)
        err = quantization_error(w, q)
    del w
    if bar is not None:
        bar.update(p.spec.n_elements)
    return err


def progress_bar(total: int, progress: bool | None, desc: str = "convert"):
    """A tqdm bar over `total` weights, or None: progress True/False forces it, None shows it on a TTY
    or for models above _LONG weights; a callable gets the updates instead (convert/progress.py)."""
    if callable(progress):
        from .progress import CallbackBar

        return CallbackBar(total, progress, desc)
    show = progress if progress is not None else (sys.stderr.isatty() or total > _LONG)
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="w", unit_scale=True, desc=desc, file=sys.stderr,
                mininterval=0.5 if sys.stderr.isatty() else 10.0)


def _rows(q: QTensor, r0: int, r1: int) -> QTensor:
    """Rows r0:r1 of a quantized matrix (every type stores whole rows contiguously)."""
    r1 = min(r1, q.shape[0])
    part = (lambda a: None if a is None else a[r0:r1])
    return QTensor(q.qtype, (r1 - r0, q.shape[1]), q.data[r0:r1], part(q.scales), part(q.biases))


def quantization_error(w: np.ndarray, q: QTensor) -> float:
    """Relative RMS of dequantize(q) against w, dequantizing ~1M weights at a time
    (a whole-tensor dequantized copy would double the peak memory)."""
    w2 = w.reshape(q.shape)
    step = max(1, (1 << 20) // q.shape[1])
    num = den = 0.0
    for r in range(0, q.shape[0], step):
        a = w2[r:r + step].astype(np.float64)
        num += float(np.square(dequantize(_rows(q, r, r + step)) - a).sum())
        den += float(np.square(a).sum())
    return _ratio(num, den)


def relative_rms(w: np.ndarray, d: np.ndarray, chunk: int = 1 << 20) -> float:
    """||d - w|| / ||w||, accumulated in float64 `chunk` weights at a time (a whole 7B
    matrix in float64 would be three 360 MB temporaries)."""
    wf, df = np.ravel(w), np.ravel(d)
    num = den = 0.0
    for k in range(0, wf.size, chunk):
        a = wf[k:k + chunk].astype(np.float64)
        num += float(np.square(df[k:k + chunk] - a).sum())
        den += float(np.square(a).sum())
    return _ratio(num, den)


def _ratio(num: float, den: float) -> float:
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return math.sqrt(num / den)


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


def _mean(errors: dict[str, float], sizes: dict[str, int]) -> float:
    n = sum(sizes[k] for k in errors)
    return sum(errors[k] * sizes[k] for k in errors) / n if n else 0.0


def _sig(x: float) -> float:
    return float(f"{x:.4g}") if math.isfinite(x) else x
