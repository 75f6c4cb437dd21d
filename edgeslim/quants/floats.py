"""F32, F16 and BF16 storage, byte-identical to ggml.

    F32   one weight = 4 bytes, IEEE binary32 little-endian
    F16   one weight = 2 bytes, IEEE binary16 little-endian
          (round to nearest, ties to even: numpy's cast is GGML_FP32_TO_FP16)
    BF16  one weight = 2 bytes = the top 16 bits of the binary32 pattern:

          binary32:  s eeeeeeee mmmmmmm mmmmmmmmmmmmmmmm
                     |<---------- bf16 ---------->|<- dropped ->|

          rounded to nearest even on the dropped half (ggml_compute_fp32_to_bf16);
          a NaN keeps its top half with the quiet bit (bit 6) forced on.

numpy has no bfloat16, so the BF16 rounding is written out here in integer ops
(six lines, the same rule gguf-py uses); F32/F16 are plain numpy casts.
"""
from __future__ import annotations

import numpy as np


def encode_f32(x: np.ndarray, w=None) -> np.ndarray:
    """(B, 1) float32 -> (B, 4) uint8."""
    return np.ascontiguousarray(x, dtype="<f4").view(np.uint8).reshape(x.shape[0], 4)


def decode_f32(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view("<f4").astype(np.float32).reshape(-1, 1)


def encode_f16(x: np.ndarray, w=None) -> np.ndarray:
    """(B, 1) float32 -> (B, 2) uint8 (ties to even; overflow -> inf, like ggml)."""
    with np.errstate(over="ignore"):
        h = np.ascontiguousarray(x, dtype=np.float32).astype("<f2")
    return h.view(np.uint8).reshape(x.shape[0], 2)


def decode_f16(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view("<f2").astype(np.float32).reshape(-1, 1)


def encode_bf16(x: np.ndarray, w=None) -> np.ndarray:
    """(B, 1) float32 -> (B, 2) uint8, ggml_compute_fp32_to_bf16 bit for bit."""
    u = np.ascontiguousarray(x, dtype="<f4").view(np.uint32).reshape(-1)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    rounded = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    quiet = (u >> np.uint32(16)) | np.uint32(64)
    h = np.where(nan, quiet, rounded).astype("<u2")
    return h.view(np.uint8).reshape(x.shape[0], 2)


def decode_bf16(raw: np.ndarray) -> np.ndarray:
    h = np.ascontiguousarray(raw).view("<u2").astype(np.uint32) << np.uint32(16)
    return h.view(np.float32).reshape(-1, 1)
