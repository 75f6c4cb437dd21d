"""An F32/F16/BF16 GGUF as a conversion source (re-quantize, like llama-quantize).

Metadata is copied key by key with its original GGUF value types, except the
keys that describe the old file's encoding (file type, quantization version,
alignment and every `edgeslim.*` key), which the new file writes itself.
Tensors are read from the validated mmap (`edgeslim.gguf_file.GGUFFile`);
`gguf.GGUFReader` is used only afterwards, for the typed metadata.
"""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from edgeslim.errors import UnsupportedError
from edgeslim.gguf_file import GGUFFile
from edgeslim.tables import GGUF_MAGIC, GGMLType, Keys

from edgeslim.arch import RUNTIME
from .model import SourceModel, TensorSpec

FLOAT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)
_DROP = (Keys.ARCH, Keys.FILE_TYPE, Keys.QUANT_VERSION, Keys.ALIGNMENT)


def is_gguf(path: Path) -> bool:
    """True for a regular file starting with the GGUF magic."""
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        return int.from_bytes(fh.read(4), "little") == GGUF_MAGIC


def open_gguf(path: Path) -> SourceModel:
    """A float GGUF as a SourceModel; a quantized one is refused."""
    f = GGUFFile(path)
    quantized = sorted({t.type_name for t in f.tensors.values() if t.ggml_type not in FLOAT_TYPES})
    if quantized:
        raise UnsupportedError(f"{path} is already quantized ({', '.join(quantized)}); re-quantizing loses quality, "
                               "convert from the F16/F32/BF16 GGUF or the Hugging Face folder")
    arch = f.arch
    if not arch:
        raise UnsupportedError(f"{path} has no general.architecture; it is not a model file")
    known = sorted(RUNTIME)
    if arch not in known:
        raise UnsupportedError(f"{path}: architecture {arch!r} is not supported; edgeslim converts "
                               f"{', '.join(known)} GGUF files")
    if not any(len(t.shape) == 2 for t in f.tensors.values()):
        raise UnsupportedError(f"{path} has no weight matrices ({len(f.tensors)} tensors; a vocab-only file?); "
                               "give a model GGUF with its weights")
    n_heads = _count(f.get(Keys.HEADS, 1))
    head_dim = _count(f.get(Keys.KEY_LENGTH) or _count(f.get(Keys.EMBED, 0)) // max(n_heads, 1))
    specs = [TensorSpec(t.name, t.shape, lambda n=t.name: np.array(f.array(n), dtype=np.float32))
             for t in f.tensors.values()]  # the source's order, as llama-quantize keeps it

    def write_metadata(writer: gguf.GGUFWriter) -> None:
        reader = gguf.GGUFReader(path, "r")
        for key, fld in reader.fields.items():
            if key.startswith("GGUF.") or key in _DROP or key.startswith("edgeslim."):
                continue
            vtype = fld.types[0]
            if vtype == gguf.GGUFValueType.ARRAY:
                writer.add_key_value(key, fld.contents(), vtype, sub_type=fld.types[-1])
            else:
                writer.add_key_value(key, fld.contents(), vtype)

    return SourceModel(arch, str(f.get(Keys.NAME, path.stem)), path.name, _count(f.get(Keys.BLOCKS, 0)),
                       _count(f.get(Keys.HEADS_KV) or n_heads), head_dim, specs, write_metadata, lambda: _close(f))


def _count(value) -> int:
    """A dimension key as one int (some architectures store per-layer arrays: take the largest)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return int(max(value)) if len(value) else 0
    return int(value or 0)


def _close(f: GGUFFile) -> None:
    try:
        f.close()
    except BufferError:  # a view is still alive somewhere; the mmap closes with it
        pass
