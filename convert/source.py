"""The source pass: open what the user gave as a `SourceModel`, and load its tensors checked.

    model = open_source("path/to/hf-folder")    # or a hub id, or an F32/F16/BF16 .gguf file
    w = load_checked(model.tensors[0])          # float32, numpy order; one-line errors if damaged
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeslim.errors import InputError

from .gguf_source import is_gguf, open_gguf
from .hf import open_hf
from .model import SourceModel, TensorSpec


def open_source(src: str) -> SourceModel:
    """An HF folder, hub id, or F32/F16/BF16 GGUF file as a SourceModel."""
    path = Path(src)
    if is_gguf(path):
        return open_gguf(path)
    if path.is_file():
        raise InputError(f"{src} is a file but not a GGUF model; pass a Hugging Face model folder or a .gguf file")
    return open_hf(src)


def load_checked(spec: TensorSpec) -> np.ndarray:
    """The tensor as float32 (numpy order), with one-line errors for a damaged checkpoint."""
    w = spec.load()
    if tuple(w.shape) != tuple(spec.shape):
        raise InputError(f"{spec.name}: the checkpoint's data has shape {w.shape}, its header says {spec.shape}; "
                         "re-download the model")
    if not np.isfinite(w).all():
        raise InputError(f"{spec.name} contains NaN or infinite weights; the checkpoint is damaged")
    return w
