"""The write pass: the header, then each transformed tensor as it comes, then the report.

    report = write_gguf(out, model, plan, fit, family, extra, converted, force, progress, min_report_size)

`converted` is a transform pass's generator (transform.py, gptq_pass.py): it
yields one `Converted` tensor at a time in plan order, which is written and
dropped before the next is made. The file is a temp file renamed into place
only when everything was written (`GGUFOut`).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterable

from edgeslim.gguf_write import GGUFOut
from edgeslim.tables import Keys
from edgeslim.targets import Fit

from .header import add_header
from .model import SourceModel
from .notes import progress_bar
from .plan import Planned, written_summary
from .report import build_report, report_size
from .transform import Converted


def write_gguf(out: Path, model: SourceModel, plan: list[Planned], fit: Fit, family: str, extra: dict,
               converted: Iterable[Converted], force: bool, progress: bool | None,
               min_report_size: int = 0) -> dict:
    """Stream `converted` (plan order) into `out` and return the report stored in `edgeslim.report`.

    extra: the report's keys beyond the plan's (mode, budget, allocation, calibration, gptq);
    min_report_size: bytes the report must at least be given (--size's header estimate)."""
    head = build_report(model, plan, fit, family, {}, extra)
    with GGUFOut(out, arch=model.gguf_arch, force=force) as g:
        add_header(g, model, plan, fit, family, max(min_report_size, report_size(head, plan, extra["gptq"])),
                   prune_json=prune_key(extra.get("prune")))
        g.begin()
        errors, out_errors = _write_all(g, converted, progress_bar(sum(p.spec.n_elements for p in plan), progress))
        report = build_report(model, plan, fit, family, errors, extra, out_errors)
        g.fill_string(Keys.ES_REPORT, json.dumps(report, separators=(",", ":")))
    total = sum(p.nbytes for p in plan)
    print(f"edgeslim: wrote {out} ({total / 2**20:.1f} MiB of weights, {len(plan)} tensors; matrices: "
          f"{written_summary(plan)})", file=sys.stderr)
    return report


def prune_key(record: dict | None) -> str | None:
    """`edgeslim.prune`: the report's prune record without its per-tensor map, as JSON (None: not pruned)."""
    if record is None:
        return None
    return json.dumps({k: v for k, v in record.items() if k != "tensors"}, separators=(",", ":"))


def _write_all(g: GGUFOut, converted: Iterable[Converted], bar) -> tuple[dict[str, float], dict[str, float]]:
    """Write each tensor as it comes; ({name: rel RMS}, {name: rel output error}) in file order."""
    errors: dict[str, float] = {}
    out_errors: dict[str, float] = {}
    for c in converted:
        name = c.planned.spec.name
        g.write(name, c.data)
        if c.rel_rms is not None:
            errors[name] = c.rel_rms
        if c.rel_out is not None:
            out_errors[name] = c.rel_out
        if bar is not None:
            bar.set_postfix_str(name, refresh=False)
            bar.update(c.planned.spec.n_elements)
        del c
    if bar is not None:
        bar.close()
    return errors, out_errors
