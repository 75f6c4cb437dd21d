"""The sweep's grid: one `Point` per (bits, sparsity, pattern, allocation), its convert() keywords and cache key.

bits: with allocation "type" one type for every matrix (ggml: 8 -> Q8_0, 6 -> Q6_K, 5 -> Q5_K,
4 -> Q4_K, 3 -> Q3_K, 2 -> Q2_K; affine: AFFINE{bits}_G{group}); with an allocation signal
(erank, sensitivity, uniform, hybrid) a bits-per-weight budget, types chosen per matrix.
sparsity > 0 adds `prune=METHOD, sparsity=S, pattern=P` (N:M patterns fix the sparsity at
1 - N/M; other sparsities with them are skipped). Points whose keywords this converter
lacks are kept and reported "unavailable".
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path

from ..errors import InputError

GGML_BY_BITS = {8: "Q8_0", 6: "Q6_K", 5: "Q5_K", 4: "Q4_K", 3: "Q3_K", 2: "Q2_K", 16: "F16"}
ALLOCATIONS = ("type", "erank", "sensitivity", "uniform", "hybrid")
PATTERNS = ("unstructured", "2:4", "4:8")
PRUNE_METHODS = ("magnitude", "wanda", "sparsegpt")
PRUNE_KEYWORDS = ("prune", "sparsity", "pattern")


@dataclass(frozen=True)
class Point:
    """One grid point (an edgeslim conversion)."""

    bits: float
    sparsity: float = 0.0
    pattern: str = ""  # "" when dense
    allocate: str = "type"
    prune: str = ""  # "" when dense
    family: str = "ggml"
    group: int = 64

    @property
    def dense(self) -> bool:
        return self.sparsity == 0

    def qtype(self) -> str | None:
        """The single type of an allocate="type" point (None for a budget)."""
        if self.allocate != "type":
            return None
        if self.bits == 16:
            return "F16"
        if self.family == "affine":
            return f"AFFINE{int(self.bits)}_G{self.group}"
        return GGML_BY_BITS[int(self.bits)]

    def convert_kwargs(self) -> dict:
        """Keywords for edgeslim.convert.pipeline.convert (besides src, out)."""
        kw: dict = {"quant": self.qtype()} if self.allocate == "type" else {
            "bpw": float(self.bits), "allocate": self.allocate, "family": self.family, "group": self.group}
        if not self.dense:
            kw.update(prune=self.prune, sparsity=self.sparsity, pattern=self.pattern)
        return kw

    def label(self) -> str:
        """Short name for tables and legends, e.g. "Q4_K", "erank 3.5 bpw", "Q4_K 50% 2:4 wanda"."""
        base = self.qtype() or f"{self.allocate} {self.bits:g} bpw"
        return base if self.dense else f"{base} {100 * self.sparsity:g}% {self.pattern} {self.prune}"

    def series(self) -> str:
        """The chart line this point belongs to (same allocation, sparsity and pattern; bits vary)."""
        kind = "one type" if self.allocate == "type" else self.allocate
        return kind if self.dense else f"{kind}, {100 * self.sparsity:g}% {self.pattern} {self.prune}"


def floats(text: str, what: str) -> list[float]:
    """Comma list of numbers; InputError naming the flag otherwise."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{what} takes comma-separated numbers, got {text!r}") from None


def words(text: str, what: str, allowed: tuple[str, ...]) -> list[str]:
    """Comma list of choices from `allowed`; InputError naming the choices otherwise."""
    out = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in out if x not in allowed]
    if bad or not out:
        raise InputError(f"{what} takes {', '.join(allowed)}; got {text!r}")
    return out


def make_grid(bits: list[float], sparsities: list[float], patterns: list[str], allocations: list[str],
              prunes: list[str], family: str = "ggml", group: int = 64) -> tuple[list[Point], list[str]]:
    """(points, notes about skipped combinations): the product of the axes, dense points once."""
    points, notes = [], []
    for b, s, p, a, m in product(bits, sparsities, patterns, allocations, prunes):
        check_bits(b, a, family)
        if not 0 <= s < 1:
            raise InputError(f"--sparsity {s:g} must be in [0, 1)")
        if s > 0 and ":" in p and abs(s - (1 - int(p.split(":")[0]) / int(p.split(":")[1]))) > 1e-9:
            notes.append(f"skipped {p} at {100 * s:g}%: the {p} pattern fixes sparsity at "
                         f"{100 * (1 - int(p.split(':')[0]) / int(p.split(':')[1])):g}%")
            continue
        pt = Point(b, s, p if s else "", a, m if s else "", family, group)
        if pt not in points:
            points.append(pt)
    return points, sorted(set(notes))


def check_bits(bits: float, allocate: str, family: str) -> None:
    """InputError for bits that cannot be one type (allocate=type) or a budget."""
    if allocate == "type":
        ok = (GGML_BY_BITS if family == "ggml" else {2: 0, 3: 0, 4: 0, 5: 0, 6: 0, 8: 0}).keys()
        if bits not in ok:
            raise InputError(f"--bits {bits:g} has no single {family} type; use one of "
                             f"{', '.join(f'{b:g}' for b in sorted(ok) if b != 16)}, or --allocate erank")
    elif not 1.5 <= bits <= 16:
        raise InputError(f"--bits {bits:g} is not a usable bits-per-weight budget; use 2 to 8")


def missing_keywords(point: Point, convert) -> list[str]:
    """Keywords the point needs that this convert() does not accept (pruning before it lands)."""
    params = inspect.signature(convert).parameters
    return [k for k in point.convert_kwargs() if k not in params]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_hash(src: str, cache: Path) -> str:
    """sha256 of the source (a file, or a folder's files by name), remembered in `cache` by size and mtime."""
    p = Path(src)
    files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")) if p.is_dir() else [p]
    if not files:
        raise InputError(f"model {src} has no files; give an HF folder or a GGUF file")
    stamp = [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    ident = json.dumps(stamp)
    if known.get("stamp") != ident:
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.relative_to(p) if p.is_dir() else f.name}\0{file_sha256(f)}\n".encode())
        known = {"stamp": ident, "sha256": h.hexdigest()}
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, cache)
    return known["sha256"]


def point_key(point: Point | dict, source: str, setup: dict) -> str:
    """16 hex digits naming a point's cached result: its parameters, the source hash and the measurement setup."""
    params = asdict(point) if isinstance(point, Point) else point
    return hashlib.sha256(json.dumps([params, source, setup], sort_keys=True).encode()).hexdigest()[:16]
