"""Q4_K and Q5_K: 256 weights per super-block of 8 sub-blocks of 32, ggml's block_q4_K / block_q5_K.

Q4_K, 144 bytes:                          Q5_K, 176 bytes:
    byte   0 ..   1  d    (fp16)              byte   0 ..   1  d    (fp16)
    byte   2 ..   3  dmin (fp16)              byte   2 ..   3  dmin (fp16)
    byte   4 ..  15  scales[12]               byte   4 ..  15  scales[12]
    byte  16 .. 143  qs[128]  4-bit codes     byte  16 ..  47  qh[32]   5th bit of each code
                                              byte  48 .. 175  qs[128]  low 4 bits of each code

    w[i] = d * sc[i // 32] * code[i] - dmin * m[i // 32]
    code in [0, 15] (Q4_K) or [0, 31] (Q5_K); sc, m six-bit unsigned

scales[12] packs eight 6-bit sc[j] and eight 6-bit m[j] (j = 0..7), i = 0..3:

    scales[i]     = sc[i]            | hi2(sc[i + 4]) << 6
    scales[i + 4] = m[i]             | hi2(m[i + 4])  << 6
    scales[i + 8] = low4(sc[i + 4])  | low4(m[i + 4]) << 4

Codes, chunk c = 0..3 (weights 64c .. 64c+63), lane l = 0..31:

    qs[32c + l] = low4(code[64c + l]) | low4(code[64c + 32 + l]) << 4
    qh[l] bit k = code[32k + l] >> 4                       (Q5_K only, k = 0..7)
"""
from __future__ import annotations

import numpy as np

from ..tables import QK_K, block_fields
from ._common import empty_blocks, fp16_bytes, fp16_from_bytes
from .search import asym_quantize, from_elem_major, to_elem_major

SUB = 32
_F4, _F5 = block_fields("Q4_K"), block_fields("Q5_K")  # byte ranges
assert all(_F4[k] == _F5[k] for k in ("d", "dmin", "scales")), "unpack_params reads both types"
# sub-block search grid: (code value of the sub-block's range, rounding offset); llama.cpp's
# make_qkx2_quants scans the first coordinate only, the offset finds markedly better fits
FACTORS_Q4 = tuple((14.2 + 0.2 * k, o) for k in range(7) for o in (-0.25, 0.0, 0.25))
FACTORS_Q5 = tuple((30.2 + 0.2 * k, o) for k in range(7) for o in (-0.25, 0.0, 0.25))


def pack_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """sc, m (B, 8) in [0, 63] -> (B, 12) uint8."""
    sc, m = sc.astype(np.uint8), m.astype(np.uint8)
    out = np.empty((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 0xF) | ((m[:, 4:] & 0xF) << 4)
    return out


def unpack_scales(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, 12) -> sc, m (B, 8) uint8."""
    sc = np.concatenate([b[:, 0:4] & 0x3F, (b[:, 8:12] & 0xF) | ((b[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([b[:, 4:8] & 0x3F, (b[:, 8:12] >> 4) | ((b[:, 4:8] >> 6) << 4)], axis=1)
    return sc, m


def _encode(x, w, nmax, factors):
    S = QK_K // SUB
    xs, ws = to_elem_major(x, S), None if w is None else to_elem_major(w, S)
    d, dmin, sc, m, L = asym_quantize(xs, ws, nmax, 63, factors)
    return (d, dmin, sc, m), from_elem_major(L)


def _pack(name, params, code):
    """Fill the blocks of Q4_K or Q5_K: params = (d, dmin, sc, m), code (B, 256) uint8."""
    d, dmin, sc, m = params
    F = block_fields(name)
    out = empty_blocks(name, code.shape[0])
    out[:, F["d"]] = fp16_bytes(d)
    out[:, F["dmin"]] = fp16_bytes(dmin)
    out[:, F["scales"]] = pack_scales(np.asarray(sc), np.asarray(m))
    out[:, F["qs"]] = _pack_nibbles(code)
    if "qh" in F:
        h = (code >> 4).reshape(-1, 8, 32)
        out[:, F["qh"]] = np.bitwise_or.reduce(h << np.arange(8, dtype=np.uint8).reshape(1, 8, 1), axis=1)
    return out


def unpack_params(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(B, 144) or (B, 176) -> d, dmin (B,) float32, sc, m (B, 8) uint8: the arguments of `pack_q4/q5` but the codes."""
    sc, m = unpack_scales(raw[:, _F4["scales"]])
    return fp16_from_bytes(raw[:, _F4["d"]])[:, 0], fp16_from_bytes(raw[:, _F4["dmin"]])[:, 0], sc, m


def _pack_nibbles(code: np.ndarray) -> np.ndarray:
    c = code.reshape(-1, 4, 2, 32) & 0xF
    return (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(-1, 128)


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    q = qs.reshape(-1, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    return (q & 0xF).reshape(-1, QK_K)


def encode_q4(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """(B, 256) float32 [, weights] -> (B, 144) uint8."""
    params, code = _encode(x, w, 15, FACTORS_Q4)
    return _pack("Q4_K", params, code)


def encode_q5(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """(B, 256) float32 [, weights] -> (B, 176) uint8."""
    params, code = _encode(x, w, 31, FACTORS_Q5)
    return _pack("Q5_K", params, code)


def pack_q4(d: np.ndarray, dmin: np.ndarray, sc: np.ndarray, m: np.ndarray, code: np.ndarray) -> np.ndarray:
    """d, dmin (B,) (stored as fp16), sc, m (B, 8) in [0, 63], code (B, 256) in [0, 15] -> (B, 144) uint8."""
    return _pack("Q4_K", (d, dmin, sc, m), np.asarray(code).astype(np.uint8))


def pack_q5(d: np.ndarray, dmin: np.ndarray, sc: np.ndarray, m: np.ndarray, code: np.ndarray) -> np.ndarray:
    """d, dmin (B,) (stored as fp16), sc, m (B, 8) in [0, 63], code (B, 256) in [0, 31] -> (B, 176) uint8."""
    return _pack("Q5_K", (d, dmin, sc, m), np.asarray(code).astype(np.uint8))


def _decode(raw, code):
    B = raw.shape[0]
    d, dmin, sc, m = unpack_params(raw)
    dl = (d[:, None] * sc.astype(np.float32))[:, :, None]
    ml = (dmin[:, None] * m.astype(np.float32))[:, :, None]
    return (dl * code.reshape(B, 8, SUB).astype(np.float32) - ml).reshape(B, QK_K)


def decode_q4(raw: np.ndarray) -> np.ndarray:
    """(B, 144) uint8 -> (B, 256) float32, as ggml computes it: (d*sc) * code - dmin*m."""
    return _decode(raw, _unpack_nibbles(raw[:, _F4["qs"]]))


def decode_q5(raw: np.ndarray) -> np.ndarray:
    """(B, 176) uint8 -> (B, 256) float32."""
    h = (raw[:, None, _F5["qh"]] >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1
    return _decode(raw, _unpack_nibbles(raw[:, _F5["qs"]]) | (h.reshape(-1, QK_K) << 4))
