"""Optional bridge to llama.cpp's own quantizers (ggml_quantize_chunk) through ctypes.

Used only by tests and scripts/compare_quantizers.py to compare our numpy
quantizers with llama.cpp's on the same weights; nothing in the converter or
runtime depends on it.  The shared library is found, in order, at
$EDGESLIM_GGML_LIB, or in an installed llama-cpp-python (`llama_cpp/lib/`),
located without importing llama_cpp.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..tables import GGMLType, quant_info

_LIB_NAMES = ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll", "libggml.so")


def _candidates() -> list[Path]:
    paths = []
    env = os.environ.get("EDGESLIM_GGML_LIB")
    if env:
        paths.append(Path(env))
    spec = importlib.util.find_spec("llama_cpp")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            paths += [Path(loc) / "lib" / n for n in _LIB_NAMES]
    return paths


@lru_cache(maxsize=1)
def load() -> ctypes.CDLL | None:
    """The ggml library with ggml_quantize_chunk, or None when none is installed."""
    for p in _candidates():
        if not p.is_file():
            continue
        try:
            lib = ctypes.CDLL(str(p))
            fn = lib.ggml_quantize_chunk
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_size_t
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                       ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        lib.ggml_quantize_init.argtypes = [ctypes.c_int]
        lib.ggml_quantize_init.restype = None
        return lib
    return None


def quantize(w: np.ndarray, qtype: str, importance: np.ndarray | None = None) -> np.ndarray:
    """llama.cpp's bytes for a (rows, cols) float32 matrix: uint8 (rows, row_bytes)."""
    lib = load()
    if lib is None:
        raise RuntimeError("llama.cpp's ggml library is not installed (pip install llama-cpp-python)")
    t = GGMLType[qtype.upper()]
    info = quant_info(qtype)
    w = np.ascontiguousarray(w, np.float32)
    rows, cols = w.shape
    out = np.zeros((rows, cols // info.block * info.block_bytes), np.uint8)
    imat = None if importance is None else np.ascontiguousarray(importance, np.float32)
    lib.ggml_quantize_init(int(t))
    n = lib.ggml_quantize_chunk(int(t), w.ctypes.data, out.ctypes.data, 0, rows, cols,
                                None if imat is None else imat.ctypes.data)
    assert n == out.nbytes, (n, out.nbytes)
    return out


def to_float(raw: np.ndarray, qtype: str) -> np.ndarray:
    """llama.cpp's own dequantization (its type traits' to_float) of (rows, row_bytes) uint8 blocks:
    float32 (rows, cols).  The ground truth the references and kernels are checked against."""
    lib = load()
    if lib is None:
        raise RuntimeError("llama.cpp's ggml library is not installed (pip install llama-cpp-python)")

    class Traits(ctypes.Structure):  # the leading fields of ggml's struct ggml_type_traits
        _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                    ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                    ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p)]

    lib.ggml_get_type_traits.restype = ctypes.POINTER(Traits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    tr = lib.ggml_get_type_traits(int(GGMLType[qtype.upper()])).contents
    fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(tr.to_float)
    raw = np.ascontiguousarray(raw, np.uint8)
    info = quant_info(qtype)
    n = raw.size // info.block_bytes * info.block
    out = np.empty(n, np.float32)
    fn(raw.ctypes.data, out.ctypes.data, n)
    return out.reshape(raw.shape[0], -1)
