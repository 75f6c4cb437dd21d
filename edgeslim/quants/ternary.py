"""TQ1_0 and TQ2_0: ternary weights {-d, 0, +d}, one fp16 d per 256, ggml's block_tq1_0 / block_tq2_0.

    w[i] = d * (code[i] - 1),   code in {0, 1, 2}

TQ2_0, 66 bytes (2 bits per code):
    byte  0 .. 63   qs[64]     qs[32 h + l] bits 2k..2k+1 = code[128 h + 32 k + l]   (h < 2, k < 4, l < 32)
    byte 64 .. 65   d (fp16)

TQ1_0, 54 bytes (five codes per byte, base 3):
    byte  0 .. 31   qs[32]     byte l      holds code[32 k + l],        k = 0..4    (weights   0 .. 159)
    byte 32 .. 47   qs[16]     byte 32 + l holds code[160 + 16 k + l],  k = 0..4    (weights 160 .. 239)
    byte 48 .. 51   qh[4]      byte 48 + l holds code[240 + 4 k + l],   k = 0..3    (weights 240 .. 255)
    byte 52 .. 53   d (fp16)

    a byte holding codes t_0..t_4 (t_4 = 0 in qh) stores ceil(256 * v / 243), v = sum_k t_k 3^(4-k);
    code t_k = ((byte * 3^k) mod 256) * 3 >> 8   (a fixed-point base-3 digit extraction)

Search: for a given d the best code of each weight is the nearest of {-d, 0, d}
whatever its importance, so the non-zero set is always the k largest |x|.
Sorting |x| once per block and scanning k = 1..256 with running sums of
w|x| and w gives the weighted least-squares optimum exactly (d = sum w|x| /
sum w over the set); d is then rounded to fp16 and the codes re-rounded to it
(ggml's rule, d = max |x| and the codes rounded, is the k with every
|x| >= max/2; it is never better).

Throughput, million weights per CPU-second on one core of this 2-core machine while busy
(`python scripts/compare_quantizers.py --rows 256 --cols 4096 --no-mlx`, column "ours Mw/s",
normal / student-t / stories260K weights; GPTQ: `... --gptq --rows 1536 --cols 768`):
TQ1_0 / TQ2_0 22-27; GPTQ 6.  Weighted error vs llama.cpp: 0.53-0.74x.
"""
from __future__ import annotations

import numpy as np

from ..tables import QK_K, block_fields
from ._common import empty_blocks, f16, fp16_bytes, fp16_from_bytes, safe_div

_F1, _F2 = block_fields("TQ1_0"), block_fields("TQ2_0")  # byte ranges (TQ1_0's qs: the 32- and 16-byte runs)
_POW3 = np.array([81, 27, 9, 3, 1], np.uint16)  # weight of digit k in a byte's value
_MUL3 = np.array([1, 3, 9, 27, 81], np.uint8)  # decoder multipliers (mod 256)


def search(x: np.ndarray, w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(B, n) float32 [, weights] -> d (B,) fp16-exact float32, t (B, n) int8 in {-1, 0, 1}."""
    ax = np.abs(x)
    order = np.argsort(-ax, axis=1, kind="stable")  # (B, n) largest |x| first
    a = np.take_along_axis(ax, order, axis=1).astype(np.float64)
    ww = np.ones_like(a) if w is None else np.take_along_axis(w, order, axis=1).astype(np.float64)
    swa, sw = np.cumsum(ww * a, axis=1), np.cumsum(ww, axis=1)
    gain = safe_div(swa * swa, sw)  # error removed by the top-k set at its best d
    k = gain.argmax(axis=1)
    rows = np.arange(x.shape[0])
    d = f16(safe_div(swa[rows, k], sw[rows, k]))
    t = np.clip(np.rint(x * safe_div(np.float32(1), d).astype(np.float32)[:, None]), -1, 1)
    return d, t.astype(np.int8)


def encode_tq2(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """(B, 256) float32 [, weights] -> (B, 66) uint8."""
    d, t = search(x, w)
    return pack_tq2(d, (t + 1).astype(np.uint8))


def encode_tq1(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """(B, 256) float32 [, weights] -> (B, 54) uint8."""
    d, t = search(x, w)
    return pack_tq1(d, (t + 1).astype(np.uint8))


def pack_tq2(d: np.ndarray, code: np.ndarray) -> np.ndarray:
    """d (B,) (stored as fp16), code (B, 256) in {0, 1, 2} -> (B, 66) uint8."""
    c = np.asarray(code).astype(np.uint8).reshape(-1, 2, 4, 32) << (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    out = empty_blocks("TQ2_0", c.shape[0])
    out[:, _F2["qs"]] = np.bitwise_or.reduce(c, axis=2).reshape(-1, 64)
    out[:, _F2["d"]] = fp16_bytes(d)
    return out


def unpack_params_tq2(raw: np.ndarray) -> np.ndarray:
    """(B, 66) -> d (B,) float32."""
    return fp16_from_bytes(raw[:, _F2["d"]])[:, 0]


def unpack_params_tq1(raw: np.ndarray) -> np.ndarray:
    """(B, 54) -> d (B,) float32."""
    return fp16_from_bytes(raw[:, _F1["d"]])[:, 0]


def decode_tq2(raw: np.ndarray) -> np.ndarray:
    """(B, 66) uint8 -> (B, 256) float32: d * (code - 1)."""
    q = raw[:, _F2["qs"]].reshape(-1, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    t = (q & 3).reshape(-1, QK_K).astype(np.int8) - np.int8(1)
    return fp16_from_bytes(raw[:, _F2["d"]]) * t.astype(np.float32)


def _base3_bytes(code: np.ndarray, width: int, digits: int) -> np.ndarray:
    """(B, digits*width) codes, digit k of byte l at code[width*k + l] -> (B, width) bytes."""
    c = code.reshape(-1, digits, width).astype(np.uint16)
    v = (c * _POW3[:digits, None]).sum(axis=1)  # (B, width) in [0, 242]
    return ((v * 256 + 242) // 243).astype(np.uint8)


def _base3_digits(b: np.ndarray, digits: int) -> np.ndarray:
    """(B, width) bytes -> (B, digits*width) codes, digit-major (the inverse of `_base3_bytes`)."""
    q = b[:, None, :] * _MUL3[:digits, None]  # uint8: wraps mod 256
    return ((q.astype(np.uint16) * 3) >> 8).reshape(b.shape[0], -1)


def pack_tq1(d: np.ndarray, code: np.ndarray) -> np.ndarray:
    """d (B,) (stored as fp16), code (B, 256) in {0, 1, 2} -> (B, 54) uint8."""
    code = np.asarray(code).astype(np.uint8)
    B = code.shape[0]
    qh_codes = np.concatenate([code[:, 240:], np.zeros((B, 4), np.uint8)], axis=1)  # fifth digit 0
    out = empty_blocks("TQ1_0", B)
    out[:, _F1["qs"]] = np.concatenate([_base3_bytes(code[:, :160], 32, 5), _base3_bytes(code[:, 160:240], 16, 5)],
                                       axis=1)
    out[:, _F1["qh"]] = _base3_bytes(qh_codes, 4, 5)
    out[:, _F1["d"]] = fp16_bytes(d)
    return out


def decode_tq1(raw: np.ndarray) -> np.ndarray:
    """(B, 54) uint8 -> (B, 256) float32: d * (code - 1)."""
    qs = raw[:, _F1["qs"]]
    code = np.concatenate([_base3_digits(qs[:, :32], 5), _base3_digits(qs[:, 32:], 5),
                           _base3_digits(raw[:, _F1["qh"]], 4)], axis=1)
    return fp16_from_bytes(raw[:, _F1["d"]]) * (code.astype(np.int8) - np.int8(1)).astype(np.float32)
