"""The GGUF header edgeslim writes (metadata, choices, tensor records) and its exact size.

    add_header(g, model, plan, fit, family, report_size)   # everything before GGUFOut.begin()
    header_bytes(model, plan, fit, family, report_size)    # bytes before the tensor data
    file_size(header, plan)                                # the whole file (alignment padding included)

`header_bytes` writes the same header to a scratch file and measures it: the
vocabulary arrays dominate and their encoding is gguf-py's, so measuring is
exact where re-deriving the byte layout would duplicate gguf-py. `--size`
uses it to know what the weights may take.
"""
from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import gguf

from edgeslim import __version__
from edgeslim.gguf_write import GGUFOut
from edgeslim.tables import FILE_TYPE, Keys, is_quantizable, parse_affine, quant_info, sparse_info
from edgeslim.targets import Fit

from .model import SourceModel
from .plan import Planned

QUANT_VERSION = 2  # ggml's current block layouts (GGML_QNT_VERSION)
ALIGNMENT = gguf.GGUF_DEFAULT_ALIGNMENT  # gguf-py pads the header and every tensor to this


def dominant_type(plan: list[Planned]) -> str | None:
    """The type that holds the most weights among the 2-D weight matrices (llama.cpp's 'mostly ...')."""
    count: Counter = Counter()
    for p in plan:
        if is_quantizable(p.spec.name, len(p.spec.shape)):
            count[p.qtype] += p.spec.n_elements
    return count.most_common(1)[0][0] if count else None


def file_type(plan: list[Planned], label: str) -> int | None:
    """general.file_type: the uniform type's, else the dominant type's (None when it has no llama.cpp id)."""
    return FILE_TYPE.get(label, FILE_TYPE.get(dominant_type(plan) or ""))


def add_header(g: GGUFOut, model: SourceModel, plan: list[Planned], fit: Fit, family: str,
               report_size: int, types_json: str | None = None, prune_json: str | None = None) -> None:
    """Reserve the report, write metadata, edgeslim keys (`edgeslim.prune` when pruned) and the
    tensor records of `plan`."""
    g.reserve_string(Keys.ES_REPORT, report_size)
    w = g.writer
    model.write_metadata(w)
    ftype = file_type(plan, fit.qtype)
    if ftype is not None:
        w.add_uint32(Keys.FILE_TYPE, ftype)
    w.add_uint32(Keys.QUANT_VERSION, QUANT_VERSION)
    w.add_string(Keys.ES_VERSION, __version__)
    w.add_string(Keys.ES_SOURCE, model.source)
    if fit.target is not None:
        w.add_string(Keys.ES_TARGET, fit.target.name)
    w.add_string(Keys.ES_FAMILY, family)
    w.add_string(Keys.ES_CHOICES, types_json or json.dumps({p.spec.name: p.qtype for p in plan}))
    if prune_json is not None:
        w.add_string(Keys.ES_PRUNE, prune_json)
    for p in plan:
        g.plan(p.spec.name, p.spec.shape, p.qtype)


class _Measured(Exception):
    """Raised inside a scratch GGUFOut to abandon it (its temp file is removed) once measured."""


def header_bytes(model: SourceModel, plan: list[Planned], fit: Fit, family: str, report_size: int,
                 types_json: str | None = None, prune_json: str | None = None) -> int:
    """Bytes before the tensor data (padding included) of the file `add_header` would start."""
    with tempfile.TemporaryDirectory(prefix="edgeslim-header-") as tmp:
        try:
            with GGUFOut(Path(tmp) / "h.gguf", arch=model.gguf_arch) as g:
                add_header(g, model, plan, fit, family, report_size, types_json, prune_json)
                g.begin()
                g.writer.fout[0].flush()
                raise _Measured(g.tmp.stat().st_size)
        except _Measured as m:
            return _pad(int(m.args[0]))


def file_size(header: int, plan: list[Planned]) -> int:
    """Header plus every GGUF tensor padded to the alignment (an affine tensor is three, a sparse one two)."""
    total = _pad(header)
    for p in plan:
        aff = parse_affine(p.qtype)
        sp = sparse_info(p.qtype)
        if sp:
            rows, cols = p.spec.shape
            total += _pad(quant_info(sp.value).nbytes(rows * sp.kept(cols))) + _pad(rows * sp.index_row_bytes(cols))
        elif aff:
            rows, cols = p.spec.shape
            total += _pad(rows * cols * aff[0] // 8) + 2 * _pad(rows * (cols // aff[1]) * 2)
        else:
            total += _pad(p.nbytes)
    return total


def _pad(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT
