"""Small helpers shared by the quantizers: fp16 rounding, rounding rules, byte views."""
from __future__ import annotations

import numpy as np

from ..tables import quant_info


FP16_MAX = 65504.0


def f16(x: np.ndarray) -> np.ndarray:
    """Round to the nearest finite fp16 (ties to even, like GGML_FP32_TO_FP16) and back to float32."""
    return np.clip(np.asarray(x, np.float32), -FP16_MAX, FP16_MAX).astype(np.float16).astype(np.float32)


def fp16_bytes(x: np.ndarray) -> np.ndarray:
    """(B,) float -> (B, 2) uint8: the little-endian fp16 bytes ggml stores for a scale."""
    return np.ascontiguousarray(np.asarray(x, np.float32).astype("<f2")).view(np.uint8).reshape(-1, 2)


def fp16_from_bytes(b: np.ndarray) -> np.ndarray:
    """(B, 2) uint8 -> (B, 1) float32 (exact widening)."""
    return np.ascontiguousarray(b).view("<f2").astype(np.float32).reshape(-1, 1)


def round_away(x: np.ndarray) -> np.ndarray:
    """C `roundf`: round half away from zero (ggml's Q8_0 uses it; np.rint rounds half to even)."""
    return np.copysign(np.floor(np.abs(x) + np.float32(0.5)), x)


def safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den where den != 0, else 0 (no warnings)."""
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.result_type(num, den))
    np.divide(num, den, out=out, where=den != 0)
    return out


def wsum(a: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """Sum over the last axis, weighted by w when given."""
    return (a.sum(-1) if w is None else (a * w).sum(-1))


def empty_blocks(name: str, n: int) -> np.ndarray:
    """(n, block bytes) uint8 to fill: one row per ggml block of type `name` (fields: tables.block_fields)."""
    return np.empty((n, quant_info(name).block_bytes), np.uint8)
