"""Numba kernels for edgeslim's sparse types ("Q4_K@2:4", "Q8_0@50%": edgeslim/quants/sparse.py).

    p = prepare(qtype, values, shape, index)   # SparsePacked: the stored bytes, nothing expanded
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
as the dense driver does. Registered with `spec.register_own`: the package's API
(driver.py) hands this module the sparse weights and their SparsePacked.

The block decoders compute exactly what ggml computes (same float32 operations
in the same order), so `dequantize` equals the numpy reference bit for bit
(tests/test_sparse_kernels.py). Hand-written: numba has no ggml block decoders.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from ...errors import FormatError, UnsupportedError
from ...quants.sparse import COMB_2_4, COMB_4_8, VALUE_TYPES, info_of
from ...tables import quant_info
from .spec import register_own

SMALL_T = 16  # above: dense tiles + BLAS
SLACK = 8  # position buffers run this far past the kept count (table writes need no bounds test)
TILE_ELEMS = 1 << 22  # float32 weights per dequantized tile on the prefill path (16 MB)
_INDEX = {"comb3": 0, "comb7": 1, "bitmap": 2}
_VALUE = {v: k for k, v in enumerate(VALUE_TYPES)}  # the vcode branches of _decode_values:
assert VALUE_TYPES == ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "F16"), "update _decode_values"
COMB24 = np.ascontiguousarray(COMB_2_4, np.int32)  # (6, 2)
COMB48 = np.ascontiguousarray(COMB_4_8, np.int32)  # (70, 4)
# bitmap byte -> its set bits' positions (first popcount entries), and 2:4 index byte -> six positions
BITS = np.array([[j for j in range(8) if b >> j & 1] + [0] * (8 - bin(b).count("1")) for b in range(256)], np.int32)
NBITS = np.array([bin(b).count("1") for b in range(256)], np.int32)
PAIRS3 = np.array([[4 * i + int(COMB_2_4[(b // 6 ** i) % 6][k]) for i in range(3) for k in range(2)]
                   if b < 216 else [0] * 6 for b in range(256)], np.int32)  # (256, 6)


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


def claims(qtype: str, index) -> bool:
    """Whether a weight is this family's: a position index, or a sparse type name (tables.sparse_info)."""
    return index is not None or "@" in qtype


def prepare(qtype: str, values, shape, index) -> SparsePacked:
    """Check and hold one stored sparse weight (a copy of the bytes as stored: no expansion)."""
    info = info_of(qtype)
    if index is None:
        raise FormatError(f"{qtype} weight of shape {tuple(shape)} has no {qtype} position index; the file is "
                          "corrupt")
    rows, cols = (int(v) for v in shape)
    if info.value not in _VALUE:
        raise UnsupportedError(f"no CPU kernel for sparse values in {info.value}; re-convert with "
                               f"{', '.join(VALUE_TYPES)}")
    # own copies, as the dense kernels' repacked planes: the backend then drops the file's mapped pages
    v = np.array(np.asarray(values).view(np.uint8), order="C").reshape(rows, -1)
    ix = np.array(np.asarray(index).view(np.uint8), order="C").reshape(rows, -1)
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
        _matvec(p.values, p.index, p.vcode, p.icode, p.kept, x, y, PAIRS3, COMB48, BITS, NBITS)
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
    _dense_rows(p.values, p.index, p.vcode, p.icode, p.kept, ids, out, PAIRS3, COMB48, BITS, NBITS)
    return out


def dequantize(p: SparsePacked) -> np.ndarray:
    """The whole weight as dense float32 (rows, cols)."""
    return embed_rows(p, np.arange(p.shape[0]))


# ---------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------
@njit(parallel=True, cache=True, fastmath=True)
def _matvec(values, index, vcode, icode, kept, x, y, p3, c48, bits, nbits):
    rows = values.shape[0]
    T, cols = x.shape
    for r in prange(rows):
        val = np.empty(kept, np.float32)
        pos = np.empty(kept + SLACK, np.int32)
        dense = np.zeros(cols, np.float32)
        _decode_values(vcode, values[r], val)
        _decode_positions(icode, index[r], cols, pos, p3, c48, bits, nbits)
        for k in range(kept):  # scattered into a dense row: the products below are contiguous (SIMD)
            dense[pos[k]] = val[k]
        for t in range(T):
            xt = x[t]
            acc = np.float32(0.0)
            for j in range(cols):
                acc += dense[j] * xt[j]
            y[t, r] = acc


@njit(parallel=True, cache=True)
def _dense_rows(values, index, vcode, icode, kept, ids, out, p3, c48, bits, nbits):
    for i in prange(ids.size):
        r = ids[i]
        val = np.empty(kept, np.float32)
        pos = np.empty(kept + SLACK, np.int32)
        _decode_values(vcode, values[r], val)
        _decode_positions(icode, index[r], out.shape[1], pos, p3, c48, bits, nbits)
        for k in range(kept):
            out[i, pos[k]] = val[k]


@njit(cache=True, inline="always")
def _decode_positions(icode, ix, cols, pos, p3, c48, bits, nbits):
    """Column of each kept weight of one row, in order (icode: 0 = 2:4, 1 = 4:8, 2 = bitmap), by tables:
    a 2:4 byte gives six positions (p3), a 4:8 code four (c48), a bitmap byte its set bits (bits, nbits)."""
    if icode == 0:
        for j in range(ix.size):
            t = p3[np.int32(ix[j])]
            for i in range(6):  # pos has SLACK entries past kept: no bounds test in the loop
                pos[6 * j + i] = 12 * j + t[i]
    elif icode == 1:
        k = 0
        for g in range(cols // 8):
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
        k = 0
        for j in range(ix.size):
            b = np.int32(ix[j])
            t = bits[b]
            for i in range(8):  # entries past the set bits are overwritten by the next byte's (or slack)
                pos[k + i] = 8 * j + t[i]
            k += nbits[b]


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
                out[32 * b + i] = np.float32((np.int32(raw[o + 2 + i]) ^ 128) - 128) * d
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
        for h in range(2):
            for quarter in range(4):
                ql = o + 64 * h + 32 * (quarter & 1)
                qh = o + 128 + 32 * h
                shift_lo = 4 * (quarter >> 1)
                base = 256 * b + 128 * h + 32 * quarter
                for half in range(2):  # two sub-blocks of 16
                    s = np.int32(raw[o + 192 + (128 * h + 32 * quarter + 16 * half) // 16])
                    dl = d * np.float32(s - 256 if s > 127 else s)
                    for l in range(16 * half, 16 * half + 16):
                        lo = (np.int32(raw[ql + l]) >> shift_lo) & 0xF
                        hi = (np.int32(raw[qh + l]) >> (2 * quarter)) & 3
                        out[base + l] = dl * np.float32((lo | (hi << 4)) - 32)


@njit(cache=True, inline="always")
def _q3k(raw, out):
    """Q3_K (110 B): (d * q) * (code - 4) per sub-block of 16 (q3_k.py draws it)."""
    for b in range(out.size // 256):
        o = 110 * b
        d = _half(np.int32(raw[o + 108]), np.int32(raw[o + 109]))
        for h in range(2):
            for quarter in range(4):
                k = 4 * h + quarter  # 32-weight chunk: its hmask bit and its two sub-blocks
                base = 256 * b + 32 * k
                for half in range(2):
                    s = 2 * k + half
                    lo = (np.int32(raw[o + 96 + s]) & 0xF) if s < 8 else (np.int32(raw[o + 96 + s - 8]) >> 4)
                    hi = (np.int32(raw[o + 104 + s % 4]) >> (2 * (s // 4))) & 3
                    dl = d * np.float32((lo | (hi << 4)) - 32)
                    for l in range(16 * half, 16 * half + 16):
                        q = (np.int32(raw[o + 32 + 32 * h + l]) >> (2 * quarter)) & 3
                        q |= ((np.int32(raw[o + l]) >> k) & 1) << 2
                        out[base + l] = dl * np.float32(q - 4)


@njit(cache=True, inline="always")
def _q2k(raw, out):
    """Q2_K (84 B): (d * sc) * code - dmin * m per sub-block of 16 (q2_k.py draws it)."""
    for b in range(out.size // 256):
        o = 84 * b
        d = _half(np.int32(raw[o + 80]), np.int32(raw[o + 81]))
        dmin = _half(np.int32(raw[o + 82]), np.int32(raw[o + 83]))
        for h in range(2):
            for quarter in range(4):
                k = 4 * h + quarter
                base = 256 * b + 32 * k
                for half in range(2):
                    sc = np.int32(raw[o + 2 * k + half])
                    dl = d * np.float32(sc & 0xF)
                    ml = dmin * np.float32(sc >> 4)
                    for l in range(16 * half, 16 * half + 16):
                        q = (np.int32(raw[o + 16 + 32 * h + l]) >> (2 * quarter)) & 3
                        out[base + l] = dl * np.float32(q) - ml


register_own(sys.modules[__name__], SparsePacked)
