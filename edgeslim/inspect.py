"""`edgeslim inspect FILE [--json] [--verify]`: what is inside a GGUF file.

Every tensor's name, shape, type, bits per weight and bytes, the totals, and the
edgeslim metadata (the conversion report pretty-printed). An affine tensor (three
GGUF tensors: packed codes, `.scales`, `.biases`) is shown as one logical
tensor of type AFFINE{bits}_G{group}, a sparse one (kept values + `.sparse_index`)
as one tensor of type VALUE@2:4 / VALUE@4:8 / VALUE@50%, with a line saying that
llama.cpp cannot run those. Reads with the mmap reader only: no torch.

For an edgeslim file the table also shows, from `edgeslim.report`, each
tensor's measured relative RMS error (`rel_rms%`) and, when the types were
allocated to a budget (`--target/--bpw/--size`), the error the analysis
predicted for the chosen type (`pred%`; for plain rounding, so GPTQ's weight
error is higher by design), and for GPTQ'd tensors the layer's output error on
the calibration inputs relative to its output (`out%`: what GPTQ minimises),
followed by the allocation summary (`allocation_summary`, also printed by
`edgeslim convert`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict

from .gguf_file import GGUFFile
from .tables import Keys
from .targets import gib
from .tensor_rows import Row, tensor_rows  # noqa: F401  (Row: part of inspect's API)

_JSON_KEYS = (Keys.ES_REPORT, Keys.ES_CHOICES, Keys.ES_PRUNE)


def edgeslim_metadata(f: GGUFFile) -> dict:
    """edgeslim.* keys (except per-tensor affine and sparse records), JSON values parsed."""
    out = {}
    prefixes = (Keys.AFFINE.split("{")[0], Keys.SPARSE.split("{")[0])
    for key, value in f.kv.items():
        if not key.startswith("edgeslim.") or key.startswith(prefixes):
            continue
        if key in _JSON_KEYS and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                value = value.strip()
        out[key] = value.strip() if isinstance(value, str) else value
    return out


def verify_checksum(f: GGUFFile) -> bool | None:
    """sha256 over every tensor's bytes in file order against `edgeslim.checksum` (None: no checksum)."""
    want = f.kv.get(Keys.ES_CHECKSUM)
    if not isinstance(want, str) or not want.strip():
        return None
    h = hashlib.sha256()
    for name in f.tensors:
        h.update(f.data(name))
    return h.hexdigest() == want.strip()


def inspect_file(path: str, verify: bool = False) -> dict:
    """Everything `inspect` shows, as a JSON-ready dict."""
    f = GGUFFile(path)
    rows = tensor_rows(f)
    n = sum(r.n_elements for r in rows)
    nbytes = sum(r.bytes for r in rows)
    info = {
        "file": str(path),
        "architecture": f.arch,
        "name": f.kv.get(Keys.NAME),
        "file_type": f.kv.get(Keys.FILE_TYPE),
        "tokenizer": f.kv.get(Keys.TOK_MODEL),
        "vocab_size": len(f.kv.get(Keys.TOK_TOKENS, []) or []),
        "tensors": [dict(asdict(r), shape=list(r.shape), bpw=round(r.bpw, 4)) for r in rows],
        "total": {"tensors": len(rows), "elements": n, "bytes": nbytes, "bpw": round(8.0 * nbytes / n, 4) if n else 0},
        "edgeslim": edgeslim_metadata(f),
    }
    sparse = sorted({r.type for r in rows if "@" in r.type})
    if sparse:
        info["llama_cpp"] = (f"llama.cpp cannot read this file: {sum('@' in r.type for r in rows)} tensors use "
                             f"edgeslim's sparse types ({', '.join(sparse)}); run it with edgeslim")
    if verify:
        info["checksum_ok"] = verify_checksum(f)
    _add_report_columns(info)
    return info


def _add_report_columns(info: dict) -> None:
    """Per tensor `rel_rms` (measured), `predicted_rel_rms` (allocation) and `rel_out` (GPTQ's output
    error) from the report, where present."""
    report = info["edgeslim"].get(Keys.ES_REPORT)
    if not isinstance(report, dict):
        return
    measured = report.get("rel_rms") or {}
    out_err = report.get("rel_out") or {}
    alloc = report.get("allocation")
    predicted = (alloc.get("tensors") or {}) if isinstance(alloc, dict) else {}
    for t in info["tensors"]:
        if t["name"] in measured:
            t["rel_rms"] = measured[t["name"]]
        if t["name"] in predicted:
            t["predicted_rel_rms"] = predicted[t["name"]].get("rel_rms")
        if t["name"] in out_err:
            t["rel_out"] = out_err[t["name"]]


def allocation_summary(report: dict, indent: str = "") -> list[str]:
    """Lines describing how the types were chosen: budget, signal, calibration, GPTQ, bits per
    weight and the type histogram (empty for a report without types)."""
    types = report.get("types") or {}
    if not types:
        return []
    lines = []
    alloc, budget = report.get("allocation"), report.get("budget")
    cal = report.get("calibration")
    how = (f"calibrated on {cal.get('tokens')} tokens ({cal.get('source')})" if isinstance(cal, dict)
           else "not calibrated")
    gptq = ", GPTQ rounding" if report.get("gptq") else ""
    if isinstance(alloc, dict) and isinstance(budget, dict):
        lines.append(f"{indent}allocation: {alloc.get('signal')} signal, {how}{gptq}; "
                     f"budget {gib(budget.get('bytes', 0))} (--{budget.get('kind')} {budget.get('value')}), "
                     f"used {gib(alloc.get('total_bytes', 0))}; "
                     f"predicted error {alloc.get('predicted_error')} (lower bound {alloc.get('error_lower_bound')})")
    else:
        lines.append(f"{indent}types: one type for every matrix, {how}{gptq}")
    n = sum(h["weights"] for h in types.values()) or 1
    hist = ", ".join(f"{t} {h['tensors']} tensor{'s' if h['tensors'] != 1 else ''} ({100 * h['weights'] / n:.1f}%)"
                     for t, h in types.items())
    lines.append(f"{indent}{report.get('bpw', 0):.3f} bits per matrix weight: {hist}")
    return lines


def format_text(info: dict) -> str:
    lines = [f"{info['file']}: {info['architecture']} '{info['name']}', tokenizer {info['tokenizer']} "
             f"({info['vocab_size']} tokens)"]
    width = max([len(t["name"]) for t in info["tensors"]] + [4])
    meas = any("rel_rms" in t for t in info["tensors"])
    pred = any("predicted_rel_rms" in t for t in info["tensors"])
    out = any("rel_out" in t for t in info["tensors"])
    lines.append(f"{'name':<{width}}  {'shape':<16} {'type':<12} {'bpw':>7} {'bytes':>14}"
                 + (f" {'rel_rms%':>9}" if meas else "") + (f" {'pred%':>8}" if pred else "")
                 + (f" {'out%':>8}" if out else ""))
    for t in info["tensors"]:
        shape = "x".join(str(d) for d in t["shape"])
        lines.append(f"{t['name']:<{width}}  {shape:<16} {t['type']:<12} {t['bpw']:>7.3f} {t['bytes']:>14,}"
                     + (f" {_pct(t.get('rel_rms')):>9}" if meas else "")
                     + (f" {_pct(t.get('predicted_rel_rms')):>8}" if pred else "")
                     + (f" {_pct(t.get('rel_out')):>8}" if out else ""))
    tot = info["total"]
    if "llama_cpp" in info:
        lines.append(f"note: {info['llama_cpp']}")
    lines.append(f"total: {tot['tensors']} tensors, {tot['elements']:,} weights, {tot['bytes']:,} bytes "
                 f"({tot['bytes'] / 2**20:.1f} MiB), {tot['bpw']:.3f} bits per weight")
    if "checksum_ok" in info:
        lines.append({True: "checksum: ok", False: "checksum: MISMATCH (the file is damaged)",
                      None: "checksum: none stored"}[info["checksum_ok"]])
    es = dict(info["edgeslim"])
    if es:
        es.pop(Keys.ES_CHOICES, None)  # the table above already shows every type
        report = es.pop(Keys.ES_REPORT, None)
        for key, value in es.items():
            lines.append(f"{key}: {value}")
        if isinstance(report, dict):
            lines += allocation_summary(report)
            lines.append(f"{Keys.ES_REPORT} (per-tensor entries are in the table):")
            lines.append(json.dumps(_without_tables(report), indent=2))
        elif report is not None:
            lines.append(f"{Keys.ES_REPORT}:")
            lines.append(report)
    return "\n".join(lines)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.3f}"


def _without_tables(report: dict) -> dict:
    """The report minus its per-tensor maps (rel_rms, rel_out, allocation tensors), shown in the table."""
    out = {k: v for k, v in report.items() if k not in ("rel_rms", "rel_out")}
    if isinstance(out.get("allocation"), dict):
        out["allocation"] = {k: v for k, v in out["allocation"].items() if k != "tensors"}
    return out


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="GGUF file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--verify", action="store_true", help="recompute the tensor-data checksum")
    from .analyze_cmd import add_analyze_args

    add_analyze_args(parser)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "analyze", False):
        from .analyze_cmd import run_analyze

        return run_analyze(args)
    info = inspect_file(args.file, verify=args.verify)
    print(json.dumps(info, indent=2) if args.json else format_text(info), file=sys.stdout)
    return 1 if info.get("checksum_ok") is False else 0
