"""The measure pass: what to calibrate on, the calibration statistics, and the per-matrix analysis.

    cal = calibration_for(src, model, calib, n_tokens, signal, gptq)   # a Calibration, or None
    imp = measure_importance(cal)                # Importance: mean x^2 per input column of every linear
    analyses = analyze_matrices(mats, types, imp.by_name, signal, progress)   # for the allocator

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

Analysis: each matrix is loaded alone, measured (spectrum, moments) and
quantized to every candidate type on a row sample (`analyze.analyze_tensor`,
importance-weighted when calibrated), then freed.
"""
from __future__ import annotations

import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeslim.errors import InputError

from .analyze import TensorAnalysis, analyze_tensor
from .gguf_source import is_gguf
from .model import SourceModel, TensorSpec
from .notes import progress_bar
from .source import load_checked

AUTO_CALIB_SIGNALS = ("erank", "sensitivity", "hybrid")


@dataclass(frozen=True)
class Calibration:
    """What the converter calibrates on."""

    folder: Path
    text: str | None  # None: the built-in sample
    source: str  # "built-in" or the file's name
    n_tokens: int  # asked for


@dataclass
class Importance:
    """The first calibration pass's result: {GGUF name: (cols,) mean x^2} and what it ran on."""

    by_name: dict[str, np.ndarray] = field(default_factory=dict)
    tokens: int = 0
    sequences: int = 0


def measure_importance(cal: Calibration | None) -> Importance:
    """Per-linear mean x^2 (no Hessians), one decoder layer at a time; empty without calibration."""
    if cal is None:
        return Importance()
    from .calibrate import collect

    stats = collect(cal.folder, cal.text, cal.n_tokens)
    return Importance(stats.importance, stats.n_tokens, stats.n_sequences)


def calibration_record(cal: Calibration | None, imp: Importance) -> dict | None:
    """The report's `calibration` entry."""
    if cal is None:
        return None
    return {"source": cal.source, "tokens": imp.tokens, "tokens_requested": cal.n_tokens,
            "sequences": imp.sequences}


def _has_torch() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


def hf_folder(src: str) -> Path | None:
    """The HF folder behind `src` (a hub id resolves to its download), None for GGUF files."""
    p = Path(src)
    if p.is_dir():
        return p
    if p.exists() or is_gguf(p):
        return None
    from .hf import download, looks_like_hub_id

    return download(src) if looks_like_hub_id(src) else None


def calibration_for(src: str, model: SourceModel, calib, n_tokens: int, signal: str | None,
                    gptq: bool, prune: str | None = None) -> Calibration | None:
    """The calibration to run (module doc: the rule), or None. calib: a text file path,
    None (automatic) or False (never); signal: the allocation signal (None: no allocation);
    prune: the pruning method (wanda and sparsegpt need calibration, as --gptq does)."""
    needs = "--gptq" if gptq else f"--prune {prune}" if prune in ("wanda", "sparsegpt") else None
    if calib is False:
        if needs:
            raise InputError(f"{needs} needs calibration data; drop --no-calib (or give --calib FILE)")
        return None
    asked = calib is not None or needs is not None
    if not asked and signal not in AUTO_CALIB_SIGNALS:
        return None
    if n_tokens <= 0:
        raise InputError(f"--calib-tokens must be positive, got {n_tokens}")
    folder = hf_folder(src)
    flag = needs if needs and calib is None else "--calib"
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


def analyze_matrices(mats: list[TensorSpec], types, importance: dict, signal: str,
                     progress: bool | None, prune_method: str = "wanda") -> list[TensorAnalysis]:
    """What the allocator needs per matrix: measured (analysis_pass), or only the shape for the
    uniform signal (one type for all: only byte sizes matter, nothing to measure)."""
    if signal == "uniform":
        return [TensorAnalysis(m.name, _matrix_shape(m), {}) for m in mats]
    return analysis_pass(mats, types, importance, progress, prune_method)


ANALYSIS_WORKERS = 4  # most matrices analyzed at once (each holds its float32 copy and samples)


def analysis_pass(mats: list[TensorSpec], types, importance: dict, progress: bool | None,
                  prune_method: str = "wanda") -> list[TensorAnalysis]:
    """Measure each matrix alone (loaded, analyzed, freed): stats and per-type errors (`types`: one
    ladder, or {name: ladder}; sparse types pruned by `prune_method`'s mask), in `mats` order.

    Matrices are analyzed on up to min(CPUs, ANALYSIS_WORKERS) threads: the lattice types' nearest-
    point search, most of the time, is numba code that releases the GIL (a SmolLM2-135M-shaped
    model widened to 768: the analysis took 242 s of a 390 s conversion on one of 2 cores)."""
    bar = progress_bar(sum(s.n_elements for s in mats), progress, desc="analyze")

    def one(s: TensorSpec) -> TensorAnalysis:
        w = load_checked(s)
        return analyze_tensor(s.name, w, types, importance.get(s.name), prune_method=prune_method)

    out = []
    workers = min(ANALYSIS_WORKERS, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        for s, a in zip(mats, pool.map(one, mats)):
            out.append(a)
            if bar is not None:
                bar.set_postfix_str(s.name, refresh=False)
                bar.update(s.n_elements)
    if bar is not None:
        bar.close()
    return out


def measure_owl(mats: list[TensorSpec], pruning, importance: dict) -> dict[int, float]:
    """OWL's per-layer sparsity (prune.owl_sparsities) from each decoder layer's Wanda outlier ratio,
    every prunable matrix loaded alone."""
    from .prune import block_index, outlier_ratio, owl_sparsities

    counts: dict[int, list[int]] = {}
    for s in mats:
        if pruning.applies(s.name, s.shape):
            w = load_checked(s)
            n_out, n = outlier_ratio(w, importance.get(s.name))
            del w
            c = counts.setdefault(block_index(s.name), [0, 0])
            c[0] += n_out
            c[1] += n
    return owl_sparsities({k: (v[0], v[1]) for k, v in counts.items()}, pruning.sparsity, pruning.owl)


def _matrix_shape(s: TensorSpec) -> tuple[int, int]:
    return (1, s.shape[0]) if len(s.shape) == 1 else (int(s.shape[0]), int(s.shape[1]))
