"""Read one safetensors tensor at a time with a positioned file read, widened to float32.

Why not `safetensors.safe_open`: it memory-maps the whole file, and every page
a conversion touches stays mapped, so by the end the process shows the entire
checkpoint as resident (a 14 GB model -> 14 GB RSS) although it only ever needs
one tensor. The format is tiny (below), so reading each tensor's bytes with one
`readinto` keeps the peak at one tensor. BF16 is widened exactly by shifting its
16 bits into the top of a float32, so torch is not needed either.

File layout:

    u64 little-endian N | N bytes of JSON header | data
    header = {"__metadata__": {...}, NAME: {"dtype": "F16", "shape": [r, c],
              "data_offsets": [begin, end]}, ...}      # offsets relative to data
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeslim.errors import InputError, UnsupportedError

_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "F64": np.dtype("<f8")}
_MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class Entry:
    """Where one tensor lies: file, dtype name, numpy shape, absolute byte range."""

    path: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def read_header(path: Path) -> dict[str, Entry]:
    """Tensor entries of one .safetensors file, every offset checked against the file size."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        raw = fh.read(8)
        n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        if not 0 < n <= min(_MAX_HEADER, size - 8):
            raise InputError(f"{path} is not a safetensors file (bad header length); re-download it")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(f"{path} has a corrupted safetensors header; re-download it") from None
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        out[name] = _entry(path, name, info, base, size)
    return out


def _entry(path: Path, name: str, info: dict, base: int, size: int) -> Entry:
    dtype, shape = info.get("dtype"), tuple(int(d) for d in info.get("shape", ()))
    begin, end = (int(x) for x in info.get("data_offsets", (0, -1)))
    if dtype not in _DTYPES:
        raise UnsupportedError(f"tensor {name} in {path.name} is stored as {dtype}; edgeslim converts F32, F16 "
                               "and BF16 checkpoints")
    n = int(np.prod(shape, dtype=np.int64))
    if end - begin != n * _DTYPES[dtype].itemsize or begin < 0 or base + end > size:
        raise InputError(f"tensor {name} in {path.name} does not fit the file; re-download the model")
    return Entry(path, dtype, shape, base + begin, base + end)


def load(entry: Entry) -> np.ndarray:
    """The tensor as a new float32 array in numpy order."""
    raw = np.empty(entry.end - entry.begin, np.uint8)
    with open(entry.path, "rb") as fh:
        fh.seek(entry.begin)
        if fh.readinto(memoryview(raw)) != raw.size:
            raise InputError(f"{entry.path} ended early; re-download the model")
    typed = raw.view(_DTYPES[entry.dtype]).reshape(entry.shape)
    if entry.dtype == "BF16":
        return (typed.astype(np.uint32) << 16).view(np.float32)
    return typed.astype(np.float32, copy=False)
