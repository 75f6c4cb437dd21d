"""`edgeslim inspect FILE --analyze`: measure every weight matrix of a GGUF file.

For each 2-D quantizable tensor (dequantized to float32 whatever its stored
type: F32/F16/BF16, ggml k-quants, Q8_0 or affine) it prints the effective
rank and its fraction of full rank, the (Pearson) kurtosis, the 3-sigma
outlier share, and the relative RMS error ||W - Q(W)|| / ||W|| each candidate
type of the family would give (re-quantizing the stored values; `*` marks a
type replaced by its block fallback). On an already quantized file the stored
type re-quantizes almost losslessly (its values lie on that type's grid), so
the table then shows the cost of each type relative to what is stored.
numpy only: no torch.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .convert.analyze import FAMILIES, effective_types, family_types, measure_errors, tensor_stats
from .gguf_file import GGUFFile
from .tensor_rows import tensor_rows
from .quants import dequantize_raw
from .quants.affine import dequantize as affine_dequantize
from .tables import AFFINE_BIASES_SUFFIX, AFFINE_SCALES_SUFFIX, GGMLType, Keys, is_quantizable, parse_affine


def add_analyze_args(parser: argparse.ArgumentParser) -> None:
    """The flags `inspect` gains."""
    parser.add_argument("--analyze", action="store_true",
                        help="measure each weight matrix: effective rank, kurtosis, outliers, error per type")
    parser.add_argument("--analyze-family", choices=FAMILIES, default=None,
                        help="candidate types for --analyze (default: the file's edgeslim.family, else ggml)")


def load_matrix(f: GGUFFile, name: str, qtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """float32 (rows, cols) of a logical tensor (as `inspect.tensor_rows` lists it)."""
    aff = parse_affine(qtype)
    if aff:
        bits, group = aff
        codes = f.data(name).view(np.uint32).reshape(shape[0], -1)
        scales = f.array(name + AFFINE_SCALES_SUFFIX)
        biases = f.array(name + AFFINE_BIASES_SUFFIX)
        return affine_dequantize(codes, scales, biases, bits, group)
    if f.tensors[name].ggml_type in (GGMLType.F32, GGMLType.F16, GGMLType.BF16):
        return np.asarray(f.array(name), dtype=np.float32).reshape(shape)
    return dequantize_raw(f.data(name), qtype, tuple(shape))


def analyze_file(path: str, family: str | None = None):
    """Yield one JSON-ready dict per 2-D quantizable tensor, in file order."""
    with GGUFFile(path) as f:
        fam = family or (f.kv.get(Keys.ES_FAMILY) if f.kv.get(Keys.ES_FAMILY) in FAMILIES else "ggml")
        types = family_types(fam)
        for r in tensor_rows(f):
            if len(r.shape) == 2 and is_quantizable(r.name, 2):
                yield _analyze(load_matrix(f, r.name, r.type, r.shape), r.name, r.type, fam, types)


def _analyze(w: np.ndarray, name: str, qtype: str, family: str, types) -> dict:
    stats = tensor_stats(w)
    errs = measure_errors(w, types)
    energy = stats["energy"]
    used = {t: effective_types([t], w.shape[1])[0] for t in types}
    return {"name": name, "shape": list(w.shape), "type": qtype, "family": family,
            "erank": stats["erank"], "erank_fraction": stats["erank_fraction"],
            "erank_exact": stats["erank_exact"], "kurtosis": stats["kurtosis"],
            "outlier_share": stats["outlier_share"], "max_sigma": stats["max_sigma"],
            "errors": {t: {"used": used[t], "sse": errs[used[t]][0],
                           "rel_rms": float(np.sqrt(errs[used[t]][0] / energy)) if energy > 0 else 0.0}
                       for t in types}}


def _cell_width(t: str) -> int:
    return max(8, len(t) + 1)


def _line(d: dict, width: int) -> str:
    shape = "x".join(str(x) for x in d["shape"])
    cells = [f"{100 * e['rel_rms']:>{_cell_width(t) - 1}.3f}{'*' if e['used'] != t else ' '}"
             for t, e in d["errors"].items()]
    return (f"{d['name']:<{width}} {shape:<12} {d['type']:<12} {d['erank']:>9.1f} {d['erank_fraction']:>6.3f} "
            f"{d['kurtosis']:>8.2f} {100 * d['outlier_share']:>6.3f}  " + " ".join(cells))


def run_analyze(args: argparse.Namespace) -> int:
    """Print the analysis table (or JSON with --json) tensor by tensor."""
    rows = analyze_file(args.file, args.analyze_family)
    if args.json:
        print(json.dumps(list(rows), indent=2))
        return 0
    first = True
    width = 28
    for d in rows:
        if first:
            width = max(width, len(d["name"]))
            head = " ".join(f"{t:>{_cell_width(t) - 1}} " for t in d["errors"])
            print(f"{'name':<{width}} {'shape':<12} {'type':<12} {'erank':>9} {'frac':>6} {'kurtosis':>8} "
                  f"{'outl%':>6}  {head}    (relative RMS error %, family {d['family']}; * = block fallback)")
            first = False
        print(_line(d, width), flush=True)
    if first:
        print("no 2-D weight matrices to analyze", file=sys.stderr)
    return 0
