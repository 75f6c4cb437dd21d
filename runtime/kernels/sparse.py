"""Numba kernels for edgeslim's sparse types ("Q4_K@2:4", "Q8_0@50%": edgeslim/quants/sparse.py).

    p = prepare(qtype, values, index, shape)   # SparsePacked: the stored bytes, nothing expanded
    linear(p, x)    x (T, cols) float32 -> (T, rows) float32
    dequantize(p) / embed_rows(p, ids)         # dense float32 rows, pruned weights 0
    concat_rows(packs)                         # fused q|k|v, gate|up of one sparse type

Decode (T <= SMALL_T): per row, under `prange`, the row's kept values are decoded
from their ggml blocks into a float buffer and its index into column positions
(lookup tables: 2:4 byte -> three codes -> two positions each, 4:8 7-bit code ->
four positions, bitmap bits -> columns), then every activation is multiplied as
sum_k value_k * x[t, position_k] - float gathers, no int8 activations: the row's
weights are read once per call (fewer bytes than the dense row), the index costs
its decode and the gathers. Larger T: rows dequantized to dense tiles and BLAS,
as the dense driver does.

The block decoders compute exactly what ggml computes (same float32 operations
in the same order), so `dequantize` equals the numpy reference bit for bit
(tests/test_sparse_kernels.py). Hand-written: numba has no ggml block decoders.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from ...errors import FormatError, UnsupportedError
from ...quants.sparse import COMB_2_4, COMB_4_8, VALUE_TYPES, info_of
from ...tables import quant_info

SMALL_T = 16  # above: dense tiles + BLAS
TILE_ELEMS = 1 << 22  # float32 weights per dequantized tile on the prefill path (16 MB)
_INDEX = {"comb3": 0, "comb7": 1, "bitmap": 2}
_VALUE = {v: k for k, v in enumerate(VALUE_TYPES)}  # Q2_K Q3_K Q4_K Q5_K Q6_K Q8_0 F16
COMB24 = np.ascontiguousarray(COMB_2_4, np.int32)  # (6, 2)
COMB48 = np.ascontiguousarray(COMB_4_8, np.int32)  # (70, 4)


@dataclass(eq=False)
class SparsePacked:
    """A sparse weight as stored: values (rows, value bytes) uint8, index (rows, index bytes) uint8."""

    qtype: str
    shape: tuple[int, int]
    values: np.ndarray
    index: np.ndarray
    kept: int
    vcode: int
    icode: int

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.index.nbytes)


def prepare(qtype: str, values, index, shape) -> SparsePacked:
    """Check and hold one stored sparse weight (the bytes stay as stored: no expansion)."""
    info = info_of(qtype)
    rows, cols = (int(v) for v in shape)
    if info.value not in _VALUE:
        raise UnsupportedError(f"no CPU kernel for sparse values in {info.value}; re-convert with "
                               f"{', '.join(VALUE_TYPES)}")
    v = np.ascontiguousarray(np.asarray(values).view(np.uint8)).reshape(rows, -1)
    ix = np.ascontiguousarray(np.asarray(index).view(np.uint8)).reshape(rows, -1)
    vinfo = quant_info(info.value)
    kept = v.shape[1] // vinfo.block_bytes * vinfo.block
    if ix.shape[1] != info.index_row_bytes(cols) or (info.pattern.m and kept != info.kept(cols)) \
            or v.shape[1] != vinfo.nbytes(kept):
        raise FormatError(f"{qtype} weight of shape {shape}: {v.shape[1]} value and {ix.shape[1]} index bytes per "
                          "row do not match the type; the file is corrupt")
    return SparsePacked(info.name, (rows, cols), v, ix, kept, _VALUE[info.value], _INDEX[info.pattern.index])


def concat_rows(packs: list[SparsePacked]) -> SparsePacked | None:
    """The rows of `packs` stacked (one type and row length), else None."""
    first = packs[0]
    if any(not isinstance(p, SparsePacked) or p.qtype != first.qtype or p.shape[1] != first.shape[1]
           or p.kept != first.kept for p in packs):
        return None
    return SparsePacked(first.qtype, (sum(p.shape[0] for p in packs), first.shape[1]),
                        np.concatenate([p.values for p in packs]), np.concatenate([p.index for p in packs]),
                        first.kept, first.vcode, first.icode)


def linear(p: SparsePacked, x: np.ndarray) -> np.ndarray:
    """x (T, cols) -> (T, rows) = x @ W.T (module doc: gathers for small T, dense tiles + BLAS above)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        return linear(p, x[None])[0]
    rows, cols = p.shape
    if x.shape[1] != cols:
        raise ValueError(f"linear: x has {x.shape[1]} columns, weight {p.qtype} {p.shape} needs {cols}")
    if x.shape[0] <= SMALL_T:
        y = np.empty((x.shape[0], rows), np.float32)
        _matvec(p.values, p.index, p.vcode, p.icode, p.kept, x, y, COMB24, COMB48)
        return y
    y = np.empty((x.shape[0], rows), np.float32)
    step = max(1, TILE_ELEMS // cols)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        y[:, r0:r1] = x @ embed_rows(p, np.arange(r0, r1)).T
    return y


def embed_rows(p: SparsePacked, ids) -> np.ndarray:
    """Rows `ids` as dense float32 (len(ids), cols), pruned weights 0."""
    ids = np.ascontiguousarray(np.asarray(ids, np.int64).reshape(-1))
    if ids.size and (ids.min() < 0 or ids.max() >= p.shape[0]):
        raise IndexError(f"embed_rows: id out of range [0, {p.shape[0]})")
    out = np.zeros((ids.size, p.shape[1]), np.float32)
    _dense_rows(p.values, p.index, p.vcode, p.icode, p.kept, ids, out, COMB24, COMB48)
    return out


def dequantize(p: SparsePacked) -> np.ndarray:
    """The whole weight as dense float32 (rows, cols)."""
    return embed_rows(p, np.arange(p.shape[0]))


# ---------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------
@njit(parallel=True, cache=True)
def _matvec(values, index, vcode, icode, kept, x, y, c24, c48):
    rows = values.shape[0]
    T = x.shape[0]
    for r in prange(rows):
        val = np.empty(kept, np.float32)
        pos = np.empty(kept, np.int32)
        _decode_values(vcode, values[r], val)
        _decode_positions(icode, index[r], x.shape[1], pos, c24, c48)
        for t in range(T):
            xt = x[t]
            acc = np.float32(0.0)
            for k in range(kept):
                acc += val[k] * xt[pos[k]]
            y[t, r] = acc


@njit(parallel=True, cache=True)
def _dense_rows(values, index, vcode, icode, kept, ids, out, c24, c48):
    for i in prange(ids.size):
        r = ids[i]
        val = np.empty(kept, np.float32)
        pos = np.empty(kept, np.int32)
        _decode_values(vcode, values[r], val)
        _decode_positions(icode, index[r], out.shape[1], pos, c24, c48)
        for k in range(kept):
            out[i, pos[k]] = val[k]


@njit(cache=True, inline="always")
def _decode_positions(icode, ix, cols, pos, c24, c48):
    """Column of each kept weight of one row, in order (icode: 0 = 2:4, 1 = 4:8, 2 = bitmap)."""
    k = 0
    if icode == 0:
        groups = cols // 4
        for j in range(ix.size):
            b = np.int32(ix[j])
            for i in range(3):
                g = 3 * j + i
                if g < groups:
                    c = b % 6
                    pos[k] = 4 * g + c24[c, 0]
                    pos[k + 1] = 4 * g + c24[c, 1]
                    k += 2
                b //= 6
    elif icode == 1:
        groups = cols // 8
        for g in range(groups):
            bit = 7 * g
            j = bit >> 3
            v = np.int32(ix[j])
            if j + 1 < ix.size:
                v |= np.int32(ix[j + 1]) << 8
            c = (v >> (bit & 7)) & 0x7F
            for i in range(4):
                pos[k + i] = 8 * g + c48[c, i]
            k += 4
    else:
        for j in range(cols):
            if (np.int32(ix[j >> 3]) >> (j & 7)) & 1:
                pos[k] = j
                k += 1


@njit(cache=True, inline="always")
def _half(lo, hi):
    """The float32 value of the little-endian fp16 bytes (lo, hi), exactly."""
    h = np.int32(lo) | (np.int32(hi) << 8)
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:
        v = np.float32(m) * np.float32(5.9604644775390625e-08)  # 2^-24
    elif e == 31:
        v = np.float32(np.inf) if m == 0 else np.float32(np.nan)
    else:
        v = np.float32(1024 + m) * np.float32(2.0 ** (e - 25))
    return -v if h & 0x8000 else v


@njit(cache=True)
def _decode_values(vcode, raw, out):
    """ggml's decoding of one row's value blocks (vcode: index into VALUE_TYPES) into out (kept,)."""
    if vcode == 5:  # Q8_0: d (f16), 32 x int8
        for b in range(out.size // 32):
            o = 34 * b
            d = _half(raw[o], raw[o + 1])
            for i in range(32):
                q = np.int32(raw[o + 2 + i])
                out[32 * b + i] = np.float32(q - 256 if q > 127 else q) * d
    elif vcode == 6:  # F16
        for i in range(out.size):
            out[i] = _half(raw[2 * i], raw[2 * i + 1])
    elif vcode == 2 or vcode == 3:
        _q45k(raw, out, vcode == 3)
    elif vcode == 4:
        _q6k(raw, out)
    elif vcode == 1:
        _q3k(raw, out)
    else:
        _q2k(raw, out)


@njit(cache=True, inline="always")
def _q45k(raw, out, five):
    """Q4_K (144 B) / Q5_K (176 B): (d * sc) * code - dmin * m per sub-block of 32 (q4_k.py draws it)."""
    size = 176 if five else 144
    qs0 = 48 if five else 16
    for b in range(out.size // 256):
        o = size * b
        d = _half(np.int32(raw[o]), np.int32(raw[o + 1]))
        dmin = _half(np.int32(raw[o + 2]), np.int32(raw[o + 3]))
        for j in range(8):
            if j < 4:
                sc = np.int32(raw[o + 4 + j]) & 0x3F
                m = np.int32(raw[o + 8 + j]) & 0x3F
            else:
                sc = (np.int32(raw[o + 8 + j]) & 0xF) | ((np.int32(raw[o + j]) >> 6) << 4)
                m = (np.int32(raw[o + 8 + j]) >> 4) | ((np.int32(raw[o + 4 + j]) >> 6) << 4)
            dl = d * np.float32(sc)
            ml = dmin * np.float32(m)
            c, half = j // 2, j % 2
            for l in range(32):
                q = (np.int32(raw[o + qs0 + 32 * c + l]) >> (4 * half)) & 0xF
                if five:
                    q |= ((np.int32(raw[o + 16 + l]) >> j) & 1) << 4
                out[256 * b + 32 * j + l] = dl * np.float32(q) - ml


@njit(cache=True, inline="always")
def _q6k(raw, out):
    """Q6_K (210 B): (d * scale) * (code - 32) per sub-block of 16 (q6_k.py draws it)."""
    for b in range(out.size // 256):
        o = 210 * b
        d = _half(np.int32(raw[o + 208]), np.int32(raw[o + 209]))
        for i in range(256):
            h, rem = i // 128, i % 128
            quarter, l = rem // 32, rem % 32
            lo = np.int32(raw[o + 64 * h + 32 * (quarter & 1) + l])
            lo = (lo >> 4) if quarter >= 2 else (lo & 0xF)
            hi = (np.int32(raw[o + 128 + 32 * h + l]) >> (2 * quarter)) & 3
            s = np.int32(np.int32(raw[o + 192 + i // 16]))
            s = s - 256 if s > 127 else s
            out[256 * b + i] = (d * np.float32(s)) * np.float32(np.int32(lo | (hi << 4)) - 32)


@njit(cache=True, inline="always")
def _q3k(raw, out):
    """Q3_K (110 B): (d * q) * (code - 4) per sub-block of 16 (q3_k.py draws it)."""
    for b in range(out.size // 256):
        o = 110 * b
        d = _half(np.int32(raw[o + 108]), np.int32(raw[o + 109]))
        for s in range(16):
            lo = (np.int32(raw[o + 96 + s]) & 0xF) if s < 8 else (np.int32(raw[o + 96 + s - 8]) >> 4)
            hi = (np.int32(raw[o + 104 + s % 4]) >> (2 * (s // 4))) & 3
            dl = d * np.float32(np.int32(lo | (hi << 4)) - 32)
            for t in range(16):
                i = 16 * s + t
                h, rem = i // 128, i % 128
                quarter, l = rem // 32, rem % 32
                q = (np.int32(raw[o + 32 + 32 * h + l]) >> (2 * quarter)) & 3
                q |= ((np.int32(raw[o + l]) >> (i // 32)) & 1) << 2
                out[256 * b + i] = dl * np.float32(np.int32(q) - 4)


@njit(cache=True, inline="always")
def _q2k(raw, out):
    """Q2_K (84 B): (d * sc) * code - dmin * m per sub-block of 16 (q2_k.py draws it)."""
    for b in range(out.size // 256):
        o = 84 * b
        d = _half(np.int32(raw[o + 80]), np.int32(raw[o + 81]))
        dmin = _half(np.int32(raw[o + 82]), np.int32(raw[o + 83]))
        for s in range(16):
            dl = d * np.float32(np.int32(raw[o + s]) & 0xF)
            ml = dmin * np.float32(np.int32(raw[o + s]) >> 4)
            for t in range(16):
                i = 16 * s + t
                h, rem = i // 128, i % 128
                quarter, l = rem // 32, rem % 32
                q = (np.int32(raw[o + 16 + 32 * h + l]) >> (2 * quarter)) & 3
                out[256 * b + i] = dl * np.float32(q) - ml
