"""Streaming GGUF writer on top of `gguf.GGUFWriter`, safe against half-written files.

Usage (the tensor plan must be complete before data is written, which is what
lets a converter stream one tensor at a time):

    with GGUFOut("out.gguf", arch="llama", force=False) as out:
        out.writer.add_uint32("llama.block_count", 32)      # any gguf.GGUFWriter add_*
        out.reserve_string(Keys.ES_REPORT, 8192)            # filled in after the data
        out.plan("blk.0.attn_q.weight", (4096, 4096), "Q4_K")
        out.begin()
        out.write("blk.0.attn_q.weight", qtensor)
        out.fill_string(Keys.ES_REPORT, json_text)
    # renamed into place only when the block ends without an exception

A content checksum (sha256 over every tensor's bytes in file order) is always
reserved as `edgeslim.checksum` and filled at the end. The output gets the permissions
the user's files normally get (0666 less the umask), or keeps those of the file it replaces.
"""
from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from pathlib import Path

import gguf
import numpy as np

from .errors import InputError
from .tables import AFFINE_BIASES_SUFFIX, AFFINE_SCALES_SUFFIX, GGMLType, Keys, parse_affine, quant_info

_PAD = " "


def current_umask() -> int:
    """The process umask (read from /proc where possible; os.umask's set-and-restore otherwise)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_mode(path: Path) -> int:
    """Permission bits for a file written at `path`: an existing file's own mode (replacing it keeps
    it), else 0666 less the umask, as open() would give a new file."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~current_umask()


class GGUFOut:
    """A GGUF file being written to a temp file beside `path`, renamed on success."""

    def __init__(self, path: str | os.PathLike, arch: str, force: bool = False):
        self.path = Path(path)
        if self.path.exists() and not force:
            raise InputError(f"{self.path} already exists; pass --force to overwrite it or choose another -o")
        if not self.path.parent.is_dir():
            raise InputError(f"output folder {self.path.parent} does not exist; create it first")
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        os.chmod(self.tmp, output_mode(self.path))  # mkstemp's 0600 -> what the user's files normally get
        self.writer = gguf.GGUFWriter(self.tmp, arch)
        self._planned: list[str] = []
        self._reserved: dict[str, int] = {}
        self._hash = hashlib.sha256()
        self.reserve_string(Keys.ES_CHECKSUM, 64)

    # -- plan ---------------------------------------------------------------
    def reserve_string(self, key: str, size: int) -> None:
        """Reserve a fixed-size string value to be filled after the tensor data."""
        self._reserved[key] = size
        self.writer.add_string(key, _PAD * size)

    def plan(self, name: str, shape: tuple[int, int] | tuple[int], qtype: str) -> None:
        """Declare a tensor (numpy-order shape) and its storage type before `begin()`."""
        info = quant_info(qtype)
        aff = parse_affine(qtype)
        rows, cols = (1, shape[0]) if len(shape) == 1 else shape
        if aff:
            bits, group = aff
            self._info(name, (rows, cols * bits // 32), GGMLType.I32, rows * cols * bits // 8)
            for suffix in (AFFINE_SCALES_SUFFIX, AFFINE_BIASES_SUFFIX):
                self._info(name + suffix, (rows, cols // group), GGMLType.F16, rows * cols // group * 2)
            self.writer.add_array(Keys.AFFINE.format(name=name), [bits, group])
        else:
            self._info(name, tuple(shape), GGMLType[info.name], info.nbytes(rows * cols))

    def _info(self, name: str, shape: tuple[int, ...], gtype: GGMLType, nbytes: int) -> None:
        # GGUFWriter takes the numpy-order element shape and reverses it itself
        self.writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes,
                                    raw_dtype=gguf.GGMLQuantizationType(int(gtype)))
        self._planned.append(name)

    # -- write --------------------------------------------------------------
    def begin(self) -> None:
        """Write header, metadata and tensor records; data follows with `write`."""
        self.writer.write_header_to_file(self.tmp)
        self.writer.write_kv_data_to_file()
        self.writer.write_ti_data_to_file()
        self._next = 0

    def write(self, name: str, q) -> None:
        """Write the next planned tensor's data (a QTensor, or a float32/float16 array)."""
        arrays = q.arrays() if hasattr(q, "arrays") else [np.ascontiguousarray(q)]
        for i, arr in enumerate(arrays):
            expect = self._planned[self._next]
            if i == 0 and expect != name:
                raise RuntimeError(f"writing {name!r} but the plan says {expect!r} comes next")
            self._hash.update(np.ascontiguousarray(arr).view(np.uint8).data)
            self.writer.write_tensor_data(np.ascontiguousarray(arr))
            self._next += 1

    def fill_string(self, key: str, text: str) -> None:
        """Set a reserved string after the data is written (padded with spaces)."""
        size = self._reserved[key]
        raw = text.encode("utf-8")
        if len(raw) > size:
            raise RuntimeError(f"{key}: {len(raw)} bytes exceed the {size} reserved")
        self._fills = getattr(self, "_fills", {})
        self._fills[key] = raw + _PAD.encode() * (size - len(raw))

    def _patch(self) -> None:
        fills = getattr(self, "_fills", {})
        fills[Keys.ES_CHECKSUM] = self._hash.hexdigest().encode()
        with open(self.tmp, "r+b") as fh:
            head = fh.read(1 << 24)
            for key, raw in fills.items():
                kb = key.encode()
                marker = struct.pack("<Q", len(kb)) + kb + struct.pack("<IQ", 8, len(raw))
                at = head.find(marker)
                if at < 0:
                    raise RuntimeError(f"reserved key {key} not found in header")
                fh.seek(at + len(marker))
                fh.write(raw)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                if self._next != len(self._planned):
                    raise RuntimeError(f"only {self._next} of {len(self._planned)} planned tensors were written")
                self.writer.close()
                self._patch()
                os.replace(self.tmp, self.path)
        finally:
            if self.writer.fout is not None:
                for f in self.writer.fout:
                    f.close()
            self.tmp.unlink(missing_ok=True)
        return False
