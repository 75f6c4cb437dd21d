"""ggml blocks unpacked to element-order codes and float parameters (numpy, no numba, no MLX).

One description of how the 32-wide legacy types, IQ4_NL and the ternary types
store their codes, read by the numba repack (`kernels/legacy.py`) and the MLX
transcoder (`backends/mlx_transcode.py`); field offsets come from
`tables.GGML_FIELDS`.  (When edgeslim.quants carries unpackers for these
types, these functions become calls to them.)

    Q4_0/Q4_1/IQ4_NL  qs[j] = code[j] | code[j + 16] << 4            (j < 16)
    Q5_0/Q5_1         + qh (u32 LE) bit j = code[j] >> 4              (j < 32)
    TQ2_0, Q2_K       qs[32 h + l] >> 2 k & 3 = code[128 h + 32 k + l]          (Q3_K: + hmask[l] bit k << 2)
    Q4_K              qs[32 g + l] & 15 = code[64 g + l], >> 4 = code[64 g + 32 + l]  (Q5_K: + qh[l] bit k << 4)
    Q6_K              ql[64 h + 32 t + l] >> 4 u & 15 | (qh[32 h + l] >> 2 k & 3) << 4 = code[128 h + 32 k + l]
                      with k = 2 u + t
    TQ1_0             digit k of byte v = ((v * 3^k mod 256) * 3) >> 8:
                      qs[0:32] -> code[32 k + l] (k < 5), qs[32:48] -> code[160 + 16 k + l] (k < 5),
                      qh[0:4] -> code[240 + 4 k + l] (k < 4)
"""
from __future__ import annotations

import numpy as np

from ..tables import block_fields


def fields(blocks: np.ndarray, qtype: str) -> dict[str, np.ndarray]:
    """(..., block_bytes) uint8 -> {field: (..., field bytes) view}."""
    return {name: blocks[..., sl] for name, sl in block_fields(qtype).items()}


def f16(field: np.ndarray) -> np.ndarray:
    """(..., 2) uint8 little-endian fp16 -> (...) float32."""
    return np.ascontiguousarray(field).view("<f2")[..., 0].astype(np.float32)


def legacy_codes(f: dict, qtype: str) -> np.ndarray:
    """Q4_0/Q4_1/Q5_0/Q5_1/IQ4_NL fields -> (..., 32) uint8 codes (IQ4_NL: table indices);
    Q8_0 -> its int8 codes as bytes."""
    if qtype == "Q8_0":
        return f["qs"]
    qs = f["qs"]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
    if "qh" in f:
        qh = np.ascontiguousarray(f["qh"]).view("<u4")  # (..., 1)
        q |= (((qh >> np.arange(32, dtype=np.uint32)) & 1) << 4).astype(np.uint8)
    return q


def _digits(v: np.ndarray, n: int) -> np.ndarray:
    """(..., w) bytes -> (..., n * w) base-3 digits, digit k of all bytes, then digit k + 1."""
    pw = (3 ** np.arange(n)).astype(np.uint8)
    prod = (v[..., None, :] * pw[:, None]).astype(np.uint8)  # mod 256
    return ((prod.astype(np.uint16) * 3) >> 8).astype(np.uint8).reshape(*v.shape[:-1], -1)


def _crumbs(qs: np.ndarray) -> np.ndarray:
    """(..., 32 n) bytes -> (..., 128 n): crumb k of bytes 32 h + l is element 128 h + 32 k + l."""
    q = qs.reshape(*qs.shape[:-1], -1, 1, 32)
    return ((q >> (2 * np.arange(4, dtype=np.uint8))[:, None]) & 3).reshape(*qs.shape[:-1], -1)


def _bits8(b: np.ndarray) -> np.ndarray:
    """(..., 32) bytes -> (..., 256): bit k of byte l is element 32 k + l."""
    return ((b[..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1).reshape(*b.shape[:-1], 256)


def kquant_codes(f: dict, qtype: str) -> np.ndarray:
    """Q2_K..Q6_K fields -> (..., 256) unsigned codes in element order (Q3_K: 0..7 with offset 4,
    Q6_K: 0..63 with offset 32)."""
    if qtype in ("Q2_K", "Q3_K"):
        q = _crumbs(f["qs"])
        return q | (_bits8(f["hmask"]) << 2) if qtype == "Q3_K" else q
    if qtype in ("Q4_K", "Q5_K"):
        qs = f["qs"].reshape(*f["qs"].shape[:-1], 4, 1, 32)
        q = ((qs >> np.array([0, 4], np.uint8)[:, None]) & 15).reshape(*f["qs"].shape[:-1], 256)
        return q | (_bits8(f["qh"]) << 4) if qtype == "Q5_K" else q
    ql = f["ql"].reshape(*f["ql"].shape[:-1], 2, 1, 2, 32)  # [h, u, t, l]
    low = ((ql >> np.array([0, 4], np.uint8)[:, None, None]) & 15).reshape(*f["ql"].shape[:-1], 256)
    return low | (_crumbs(f["qh"]) << 4)


def ternary_codes(f: dict, qtype: str) -> np.ndarray:
    """TQ1_0 / TQ2_0 fields -> (..., 256) codes in {0, 1, 2} (w = d * (code - 1))."""
    if qtype == "TQ2_0":
        return _crumbs(f["qs"])
    qs = f["qs"]
    return np.concatenate([_digits(qs[..., :32], 5), _digits(qs[..., 32:48], 5), _digits(f["qh"], 4)], axis=-1)
