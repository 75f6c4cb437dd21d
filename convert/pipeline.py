"""The conversion: open a source, choose types (and check the fit), stream tensors out.

    convert("path/to/hf-folder", "out.gguf", quant="Q4_K")
    convert("org/model", "out.gguf", target="m2-8gb", ctx=4096)   # picks the type

Memory: tensors are loaded (positioned reads, no mmap), transformed, quantized,
measured (dequantized ~1M weights at a time) and written one at a time, so peak
RSS is about the largest tensor's float32 copy plus its quantized bytes and the
quantizer's temporaries (measured: 270 MiB for a 156M-parameter F16 checkpoint
whose largest tensor is 131 MB in float32).
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
from edgeslim.tables import FILE_TYPE, Keys, quant_info
from edgeslim.targets import DEFAULT_CTX, Fit, Target, get_target, kv_cache_bytes, pick_type, require_fit

from .gguf_source import is_gguf, open_gguf
from .hf import open_hf
from .model import SourceModel
from .notes import note
from .plan import DEFAULT_QUANT, Planned, make_plan, plan_bytes, resolve_quant

QUANT_VERSION = 2  # ggml's current block layouts (GGML_QNT_VERSION)
_LONG = 200_000_000  # weights: above this a progress bar is shown even without a TTY


def open_source(src: str) -> SourceModel:
    """An HF folder, hub id, or F32/F16/BF16 GGUF file as a SourceModel."""
    path = Path(src)
    if is_gguf(path):
        return open_gguf(path)
    if path.is_file():
        raise InputError(f"{src} is a file but not a GGUF model; pass a Hugging Face model folder or a .gguf file")
    return open_hf(src)


def convert(src: str, out: str | Path, quant: str | None = None, family: str | None = None,
            target: str | None = None, ctx: int = DEFAULT_CTX, force: bool = False,
            progress: bool | None = None) -> dict:
    """Convert `src` to the GGUF file `out`; returns the report stored in `edgeslim.report`."""
    out = Path(out)
    if out.is_dir():
        raise InputError(f"-o {out} is a folder; give the output file's name, e.g. {out / 'model.gguf'}")
    if out.exists() and not force:
        raise InputError(f"{out} already exists; pass --force to overwrite it or choose another -o")
    if ctx <= 0:
        raise InputError(f"--ctx must be a positive number of tokens, got {ctx}")
    tgt = get_target(target) if target else None
    qtype, family = resolve_quant(quant, family)
    model = open_source(src)
    try:
        fit = choose_type(model, qtype, family, tgt, ctx)
        print(fit.text(), file=sys.stderr)
        plan = make_plan(model.tensors, fit.qtype)
        note_fallbacks(plan)
        return write(model, plan, out, fit, family, force, progress)
    finally:
        model.close()


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


def _report_size(plan: list[Planned]) -> int:
    return 4096 + sum(len(p.spec.name) + 40 + (160 if p.fallback_from else 0) for p in plan)


def write(model: SourceModel, plan: list[Planned], out: Path, fit: Fit, family: str, force: bool,
          progress: bool | None) -> dict:
    """Stream the planned tensors into `out` (temp file + rename) and return the report."""
    with GGUFOut(out, arch=model.gguf_arch, force=force) as g:
        g.reserve_string(Keys.ES_REPORT, _report_size(plan))
        w = g.writer
        model.write_metadata(w)
        if fit.qtype in FILE_TYPE:
            w.add_uint32(Keys.FILE_TYPE, FILE_TYPE[fit.qtype])
        w.add_uint32(Keys.QUANT_VERSION, QUANT_VERSION)
        w.add_string(Keys.ES_VERSION, __version__)
        w.add_string(Keys.ES_SOURCE, model.source)
        if fit.target is not None:
            w.add_string(Keys.ES_TARGET, fit.target.name)
        w.add_string(Keys.ES_FAMILY, family)
        w.add_string(Keys.ES_CHOICES, json.dumps({p.spec.name: p.qtype for p in plan}))
        for p in plan:
            g.plan(p.spec.name, p.spec.shape, p.qtype)
        g.begin()
        errors = stream(g, plan, progress)
        report = build_report(model, plan, fit, family, errors)
        g.fill_string(Keys.ES_REPORT, json.dumps(report, separators=(",", ":")))
    total = sum(p.nbytes for p in plan)
    print(f"edgeslim: wrote {out} ({total / 2**20:.1f} MiB of weights, {len(plan)} tensors, {fit.qtype})",
          file=sys.stderr)
    return report


def stream(g: GGUFOut, plan: list[Planned], progress: bool | None) -> dict[str, float]:
    """Load, quantize, measure and write each tensor in plan order; {name: relative RMS error}."""
    n_weights = sum(p.spec.n_elements for p in plan)
    bar = _progress(n_weights, progress)
    errors: dict[str, float] = {}
    for p in plan:
        name = p.spec.name
        if bar is not None:
            bar.set_postfix_str(name, refresh=False)
        w = p.spec.load()  # float32, numpy order
        if tuple(w.shape) != tuple(p.spec.shape):
            raise InputError(f"{name}: the checkpoint's data has shape {w.shape}, its header says {p.spec.shape}; "
                             "re-download the model")
        if not np.isfinite(w).all():
            raise InputError(f"{name} contains NaN or infinite weights; the checkpoint is damaged")
        if p.qtype == "F32":
            g.write(name, np.ascontiguousarray(w, dtype=np.float32))
        else:
            q = quantize(w, p.qtype)
            g.write(name, q)
            errors[name] = quantization_error(w, q)
        del w
        if bar is not None:
            bar.update(p.spec.n_elements)
    if bar is not None:
        bar.close()
    return errors


def _progress(total: int, progress: bool | None):
    show = progress if progress is not None else (sys.stderr.isatty() or total > _LONG)
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="w", unit_scale=True, desc="convert", file=sys.stderr,
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


def relative_rms(w: np.ndarray, d: np.ndarray) -> float:
    """||d - w|| / ||w||, accumulated in float64."""
    a = w.astype(np.float64)
    return _ratio(float(np.square(d - a).sum()), float(np.square(a).sum()))


def _ratio(num: float, den: float) -> float:
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return math.sqrt(num / den)


def build_report(model: SourceModel, plan: list[Planned], fit: Fit, family: str, errors: dict[str, float]) -> dict:
    """The JSON stored in `edgeslim.report`: fit numbers, fallbacks, measured errors."""
    sizes = {p.spec.name: p.spec.n_elements for p in plan}
    n = sum(sizes[k] for k in errors)
    mean = sum(errors[k] * sizes[k] for k in errors) / n if n else 0.0
    return {
        "edgeslim_version": __version__,
        "source": model.source,
        "quant": fit.qtype,
        "family": family,
        "fit": fit.to_dict(),
        "fallbacks": {p.spec.name: {"requested": p.fallback_from, "used": p.qtype, "row": int(p.spec.shape[-1])}
                      for p in plan if p.fallback_from},
        "rel_rms_mean": _sig(mean),
        "rel_rms_max": _sig(max(errors.values(), default=0.0)),
        "rel_rms": {k: _sig(v) for k, v in errors.items()},
    }


def _sig(x: float) -> float:
    return float(f"{x:.4g}") if math.isfinite(x) else x
