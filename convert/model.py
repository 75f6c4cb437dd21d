"""What the converter needs from any source: tensors to stream, metadata to copy.

A source (HF folder, F16/F32 GGUF) is turned into a `SourceModel`: GGUF tensor
names with numpy-order shapes and a loader per tensor (so only one tensor is
in memory at a time), the architecture dimensions the fit report needs, and a
function that writes the source's metadata (architecture keys + tokenizer).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import gguf
import numpy as np


@dataclass
class TensorSpec:
    """One output tensor: GGUF name, numpy-order shape, and how to load it as float32."""

    name: str
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class SourceModel:
    """A model ready to stream into GGUF."""

    gguf_arch: str
    name: str
    source: str  # what the user gave (hub id, folder name, file name)
    n_layers: int
    n_kv_heads: int
    head_dim: int
    tensors: list[TensorSpec]
    write_metadata: Callable[[gguf.GGUFWriter], None]
    close: Callable[[], None] = field(default=lambda: None)


_BLK = re.compile(r"^blk\.(\d+)\.")
_FIRST = ("token_embd.", "rope_freqs.")


def tensor_order(name: str) -> tuple[int, int]:
    """Output order: embeddings and tables, then blocks by index, then the head."""
    m = _BLK.match(name)
    if m:
        return 1, int(m.group(1))
    return (0, 0) if name.startswith(_FIRST) else (2, 0)


def put_kv(writer: gguf.GGUFWriter, key: str, value) -> None:
    """Write one metadata value with llama.cpp's usual types: int -> uint32 (uint64 if
    larger), float -> float32, bool, str, and lists of those as arrays."""
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, (int, np.integer)):
        (writer.add_uint32 if 0 <= value < 2**32 else writer.add_int64)(key, int(value))
    elif isinstance(value, (float, np.floating)):
        writer.add_float32(key, float(value))
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, (list, tuple)) and value:
        writer.add_array(key, list(value))
    else:
        raise TypeError(f"cannot write metadata {key}={value!r}")
