"""GGUF reading by mmap, checked before any tensor data is touched.

Why not `gguf.GGUFReader`: it trusts the file's counts and lengths (a hostile
header can make it allocate gigabytes or raise deep inside numpy), and it is
slow on 150k-token vocabularies. This reader bounds every count and length by
the bytes actually left in the file and raises one-line `FormatError`s.
Writing uses the `gguf` package (see `edgeslim.gguf_write`).

File layout (GGUF v2/v3, little-endian):

    magic u32 "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv x  (key: str, vtype: u32, value)
    n_tensors x (name: str, n_dims: u32, ne[n_dims]: u64, ggml_type: u32, offset: u64)
    padding to general.alignment
    tensor data (each tensor at data_start + offset)

    str = len u64 + utf-8 bytes
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FormatError, UnsupportedError
from .tables import GGML_INFO, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLType, Keys

# GGUF metadata value types
_SCALAR = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY, _BOOL = 8, 9, 7
_MAX_DIMS = 4


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's record. `shape` is numpy order (rows, cols): GGUF's ne reversed."""

    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLType
    offset: int  # absolute offset in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return self.ggml_type.name

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class _Cursor:
    """Bounds-checked little-endian reads over a buffer."""

    def __init__(self, buf, path: str):
        self.buf, self.pos, self.end, self.path = buf, 0, len(buf), path

    def fail(self, what: str) -> FormatError:
        return FormatError(f"{self.path}: {what} at byte {self.pos}; the file is truncated or corrupted, re-download or re-convert it")

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > self.end:
            raise self.fail(f"needs {n} more bytes but the file ends")
        view = memoryview(self.buf)[self.pos:self.pos + n]
        self.pos += n
        return view

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def string(self) -> str:
        n = self.u64()
        if n > self.end - self.pos:
            raise self.fail(f"string of {n} bytes longer than the file")
        try:
            return bytes(self.take(n)).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("string is not valid UTF-8") from None

    def count(self, what: str, min_item_bytes: int) -> int:
        n = self.u64()
        if n * min_item_bytes > self.end - self.pos:
            raise self.fail(f"{what} count {n} cannot fit in the rest of the file")
        return n

    def value(self, vtype: int, depth: int = 0):
        if vtype in _SCALAR:
            dt = np.dtype(_SCALAR[vtype])
            v = np.frombuffer(self.take(dt.itemsize), dt)[0].item()
            return bool(v) if vtype == _BOOL else v
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY and depth == 0:
            return self.array()
        raise self.fail(f"unknown metadata value type {vtype}")

    def array(self):
        etype = self.u32()
        if etype in _SCALAR:
            dt = np.dtype(_SCALAR[etype])
            n = self.count("array", dt.itemsize)
            arr = np.frombuffer(self.take(n * dt.itemsize), dt).copy()
            return arr.astype(bool).tolist() if etype == _BOOL else arr
        if etype == _STRING:
            n = self.count("string array", 8)
            return [self.string() for _ in range(n)]
        if etype == _ARRAY:
            n = self.count("nested array", 12)
            return [self.array() for _ in range(n)]
        raise self.fail(f"unknown array element type {etype}")


def not_a_file(p: Path) -> str:
    """The message for a GGUF path that is not a regular file: what it is and what was expected."""
    if p.is_dir():
        if (p / "config.json").is_file():
            return (f"{p} is a Hugging Face model folder, not a GGUF file; convert it first: "
                    f"edgeslim convert {p} -o model.gguf")
        return f"{p} is a folder, not a GGUF file; give the path of a .gguf model file"
    if p.exists():
        return f"{p} is not a regular file; give the path of a .gguf model file"
    return f"{p}: no such file; check the path"


def what_file(head: bytes) -> str:
    """A guess at what a non-GGUF file is, from its first bytes."""
    head = bytes(head)
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive, e.g. a PyTorch checkpoint"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 28:
        return "a safetensors file"
    if head[:1] in (b"{", b"["):
        return "JSON text"
    return "it does not start with the GGUF magic"


def convert_hint(p: Path) -> str:
    """'; convert its folder first: ...' for a file inside a Hugging Face folder."""
    if (p.parent / "config.json").is_file():
        return f"; convert its folder first: edgeslim convert {p.parent} -o model.gguf"
    return ""


class GGUFFile:
    """A GGUF file opened by mmap: `kv` metadata, `tensors` records, raw `data(name)` views.

    >>> f = GGUFFile("model.gguf")
    >>> f.arch, f.tensors["token_embd.weight"].shape, f.data("output_norm.weight")
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        if not Path(self.path).is_file():
            raise FormatError(not_a_file(Path(self.path)))
        size = os.path.getsize(self.path)
        if size < 24:
            raise FormatError(f"{self.path}: {size} bytes is too small to be a GGUF file; re-download or re-convert it")
        with open(self.path, "rb") as fh:
            self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self.kv: dict[str, object] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._parse(_Cursor(self._mm, self.path))

    # -- parsing -----------------------------------------------------------
    def _parse(self, c: _Cursor) -> None:
        if c.u32() != GGUF_MAGIC:
            raise FormatError(f"{self.path}: not a GGUF file ({what_file(self._mm[:16])}); give a .gguf model file"
                              + convert_hint(Path(self.path)))
        self.version = c.u32()
        if self.version not in (2, 3):
            raise FormatError(f"{self.path}: GGUF version {self.version} is not supported (2 or 3); re-convert with a current tool")
        n_tensors = c.count("tensor", 24)
        n_kv = c.count("metadata", 12)
        for _ in range(n_kv):
            key = c.string()
            self.kv[key] = c.value(c.u32())
        infos = [self._tensor_record(c) for _ in range(n_tensors)]
        align = self.kv.get(Keys.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise c.fail(f"general.alignment {align!r} is not a power of two")
        self.data_start = (c.pos + align - 1) // align * align
        self._place(infos, align, c)

    def _tensor_record(self, c: _Cursor):
        name = c.string()
        n_dims = c.u32()
        if not 1 <= n_dims <= _MAX_DIMS:
            raise c.fail(f"tensor {name!r} has {n_dims} dimensions")
        ne = [c.u64() for _ in range(n_dims)]
        tid = c.u32()
        offset = c.u64()
        try:
            gtype = GGMLType(tid)
        except ValueError:
            raise UnsupportedError(f"{self.path}: tensor {name!r} has ggml type id {tid}, which this edgeslim does not "
                                   "know (a newer llama.cpp type?); re-quantize the model to a type such as Q4_K_M, "
                                   "or update edgeslim") from None
        if any(d == 0 or d > 2**40 for d in ne):
            raise c.fail(f"tensor {name!r} has impossible dims {ne}")
        return name, tuple(reversed(ne)), gtype, offset

    def _place(self, infos, align: int, c: _Cursor) -> None:
        file_size = len(self._mm)
        for name, shape, gtype, offset in infos:
            if name in self.tensors:
                raise c.fail(f"tensor {name!r} appears twice")
            info = GGML_INFO[gtype]
            n = int(np.prod(shape, dtype=object))
            if shape[-1] % info.block:
                raise c.fail(f"tensor {name!r} row of {shape[-1]} is not a multiple of {info.name}'s block {info.block}")
            nbytes = n // info.block * info.block_bytes
            start = self.data_start + offset
            if offset % align or start + nbytes > file_size:
                raise FormatError(
                    f"{self.path}: tensor {name!r} lies outside the file ({start + nbytes} > {file_size} bytes); "
                    "the file is truncated, re-download or re-convert it")
            self.tensors[name] = TensorInfo(name, shape, gtype, start, nbytes)

    # -- access --------------------------------------------------------------
    @property
    def arch(self) -> str:
        return str(self.kv.get(Keys.ARCH, ""))

    def get(self, key: str, default=None):
        """Metadata value; `{arch}` in the key is filled with this file's architecture."""
        return self.kv.get(key.format(arch=self.arch), default)

    def data(self, name: str) -> np.ndarray:
        """Raw bytes of a tensor as a read-only uint8 view into the mmap (no copy)."""
        t = self.tensors[name]
        return np.frombuffer(self._mm, np.uint8, t.nbytes, t.offset)

    def array(self, name: str) -> np.ndarray:
        """A float/int tensor as a typed view in numpy order (F32/F16/BF16 -> float32 copy for BF16)."""
        t = self.tensors[name]
        raw = self.data(name)
        if t.ggml_type == GGMLType.BF16:
            return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(t.shape)
        dtypes = {GGMLType.F32: np.float32, GGMLType.F16: np.float16, GGMLType.I32: np.int32,
                  GGMLType.I8: np.int8, GGMLType.I16: np.int16, GGMLType.I64: np.int64, GGMLType.F64: np.float64}
        if t.ggml_type not in dtypes:
            raise FormatError(f"{name} is {t.type_name}, not a plain array; dequantize it instead")
        return raw.view(dtypes[t.ggml_type]).reshape(t.shape)

    def drop_pages(self, start: int = 0, nbytes: int | None = None) -> None:
        """Release the mapped file's resident pages in [start, start + nbytes) (default: all), after a
        backend copied what it needs (best effort).  The range is widened to whole pages: a page shared
        with a neighbouring tensor is simply faulted back in from the page cache when read."""
        if not (hasattr(self._mm, "madvise") and hasattr(mmap, "MADV_DONTNEED")):
            return
        end = len(self._mm) if nbytes is None else min(len(self._mm), start + nbytes)
        lo = start // mmap.PAGESIZE * mmap.PAGESIZE
        if end > lo:
            try:
                self._mm.madvise(mmap.MADV_DONTNEED, lo, end - lo)
            except (OSError, ValueError):
                pass

    def drop_tensor(self, name: str) -> None:
        """Release the resident pages of one tensor's data (see drop_pages)."""
        t = self.tensors[name]
        self.drop_pages(t.offset, t.nbytes)

    def close(self) -> None:
        self._mm.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        # views handed out keep the mmap alive; closing then would raise BufferError
        try:
            self.close()
        except BufferError:
            pass
