"""Sparse quantized weights (edgeslim only): kept values in a ggml block type plus a position index.

    st = compress(w, mask, "Q4_K@2:4", importance=None)   # mask (rows, cols) bool, True = kept
    dequantize(st) -> float32 (rows, cols)                 # pruned weights are exactly 0
    dequantize_raw(values_raw, index_raw, "Q4_K@2:4", (rows, cols))   # from a file's bytes
    mask_of(st) / unpack_index(index, info, cols) -> (rows, cols) bool

Types (facts in edgeslim/tables.py, `sparse_info`): "{V}@2:4", "{V}@4:8" (N:M,
n kept in each group of m consecutive columns) and "{V}@{s}%" (unstructured:
any positions, the same count kept in every row), V one of the ggml types
edgeslim writes. Every row keeps K weights (K = cols * n / m, or (100 - s)% of
cols in whole value blocks); K must be a multiple of V's block.

Values: row r's kept weights, in increasing column order, are the row r of a
(rows, K) matrix stored in V exactly as ggml stores a V matrix (so gguf-py or
any ggml reader decodes them). The scale searches see each kept weight's own
column importance.

Index, per row, little-endian bytes, rows one after another:

    2:4  ("comb3"): group g = columns 4g..4g+3 keeps two positions a < b, coded
         c = (0,1):0 (0,2):1 (0,3):2 (1,2):3 (1,3):4 (2,3):5; three groups per byte:
             byte k = c[3k] + 6 * c[3k+1] + 36 * c[3k+2]      (< 216; missing groups 0)
         ceil(cols / 12) bytes per row: 0.667 bits per weight (log2(6)/4 = 0.646 is the least).

    4:8  ("comb7"): group g = columns 8g..8g+7 keeps four positions; c = the rank
         of the kept set among the 70 sets of four in lexicographic order
         ((0,1,2,3):0, (0,1,2,4):1, ..., (4,5,6,7):69); codes form one bit stream
         per row, code g at stream bits 7g..7g+6 (bit 0 = least significant of byte 0):
             byte 0: c0[0:7] | c1[0] << 7;  byte 1: c1[1:7] | c2[0:2] << 6;  ...
         ceil(7 * cols / 64) bytes per row: 0.875 bits per weight (log2(70)/8 = 0.766).

    unstructured ("bitmap"): bit j of the row (byte j // 8, bit j % 8) is 1 when
         column j is kept; ceil(cols / 8) bytes per row: 1 bit per weight.

Hand-written: no library packs N:M combination codes into ggml blocks.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from ..errors import FormatError, InputError, UnsupportedError
from ..tables import SPARSE_VALUES, SparseInfo, quant_info, sparse_info
from . import IMPORTANCE_FLOOR, QTensor, quantize
from . import dequantize_raw as _dense_raw

# the kept positions of each code, and the code of each group mask (bit p = position p kept)
COMB_2_4 = np.array(list(combinations(range(4), 2)), np.uint8)  # (6, 2)
COMB_4_8 = np.array(list(combinations(range(8), 4)), np.uint8)  # (70, 4)


def _code_of_mask(combs: np.ndarray, m: int) -> np.ndarray:
    """(2^m,) int16: the code of each m-bit group mask, -1 for masks that are not a combination."""
    out = np.full(1 << m, -1, np.int16)
    for c, pos in enumerate(combs):
        out[int(sum(1 << int(p) for p in pos))] = c
    return out


MASK_CODE_2_4 = _code_of_mask(COMB_2_4, 4)
MASK_CODE_4_8 = _code_of_mask(COMB_4_8, 8)
MASK_OF_CODE_2_4 = np.array([sum(1 << int(p) for p in c) for c in COMB_2_4], np.uint8)  # (6,)
MASK_OF_CODE_4_8 = np.array([sum(1 << int(p) for p in c) for c in COMB_4_8], np.uint8)  # (70,)


@dataclass
class SparseQTensor:
    """A pruned, quantized matrix: `values` (rows, K) in the value type, `index` (rows, bytes) uint8."""

    qtype: str
    shape: tuple[int, int]
    values: QTensor
    index: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.index.nbytes)

    def arrays(self) -> list[np.ndarray]:
        """The arrays a GGUF file stores, in plan order: [values bytes, index as I8]."""
        return [self.values.data, self.index.view(np.int8)]


VALUE_TYPES = SPARSE_VALUES  # the value types, smallest first (tables.py)


def value_ladder(value: str) -> list[str]:
    """The value type, then the block fallbacks a sparse row may take (K-quant -> Q8_0 -> F16);
    a type outside VALUE_TYPES starts at Q8_0."""
    start = value if value in VALUE_TYPES else "Q8_0"
    return [start] + [v for v in ("Q8_0", "F16") if VALUE_TYPES.index(v) > VALUE_TYPES.index(start)]


SPARSITY_TOLERANCE = 0.05  # unstructured: a value type is taken when its whole blocks come this close


def sparse_fallback(qtype: str, cols: int) -> str | None:
    """The sparse type a row of `cols` really takes for `qtype` (its value type falls back until the
    kept weights fill whole blocks; unstructured: until the blocks bring the pruned fraction within
    SPARSITY_TOLERANCE of the asked one, else the closest), or None when the pattern cannot cut the
    row (cols % m)."""
    info = info_of(qtype)
    fitting = [c for c in (sparse_info(f"{v}@{info.name.split('@', 1)[1]}") for v in value_ladder(info.value))
               if c.fits(cols)]
    if not fitting:
        return None
    if info.pattern.m:
        return fitting[0].name

    def off(c: SparseInfo) -> float:
        return abs(1.0 - c.kept(cols) / cols - info.percent / 100)

    close = [c for c in fitting if off(c) <= SPARSITY_TOLERANCE]
    return (close[0] if close else min(fitting, key=off)).name


def info_of(qtype: str) -> SparseInfo:
    try:
        info = sparse_info(qtype)
    except ValueError as err:
        raise UnsupportedError(str(err)) from None
    if info is None:
        raise UnsupportedError(f"{qtype} is not a sparse type (VALUE@2:4, VALUE@4:8 or VALUE@50%)")
    return info


# ---------------------------------------------------------------------------
# index
# ---------------------------------------------------------------------------
def _group_bits(mask: np.ndarray, m: int) -> np.ndarray:
    """(rows, cols) bool -> (rows, cols / m) int: bit p set when position p of the group is kept."""
    rows, cols = mask.shape
    weights = (1 << np.arange(m)).astype(np.int64)
    return mask.reshape(rows, cols // m, m).astype(np.int64) @ weights


def pack_index(mask: np.ndarray, info: SparseInfo) -> np.ndarray:
    """(rows, cols) bool -> (rows, index_row_bytes) uint8; InputError when the mask breaks the pattern."""
    rows, cols = mask.shape
    check_mask(mask, info)
    kind = info.pattern.index
    if kind == "bitmap":
        return np.packbits(mask, axis=1, bitorder="little")
    if kind == "comb3":
        codes = MASK_CODE_2_4[_group_bits(mask, 4)].astype(np.int64)  # (rows, G)
        pad = (-codes.shape[1]) % 3
        c = np.pad(codes, ((0, 0), (0, pad))).reshape(rows, -1, 3)
        return (c[:, :, 0] + 6 * c[:, :, 1] + 36 * c[:, :, 2]).astype(np.uint8)
    codes = MASK_CODE_4_8[_group_bits(mask, 8)].astype(np.uint8)  # (rows, G)
    bits = np.unpackbits(codes[:, :, None], axis=2, bitorder="little")[:, :, :7]  # (rows, G, 7)
    return np.packbits(bits.reshape(rows, -1), axis=1, bitorder="little")


def unpack_index(index: np.ndarray, info: SparseInfo, cols: int) -> np.ndarray:
    """(rows, index_row_bytes) uint8 -> (rows, cols) bool mask; FormatError for codes out of range."""
    index = np.asarray(index).view(np.uint8)
    rows = index.shape[0]
    kind = info.pattern.index
    if kind == "bitmap":
        return np.unpackbits(index, axis=1, count=cols, bitorder="little").astype(bool)
    if kind == "comb3":
        g = cols // 4
        b = index.astype(np.int64)
        if (b >= 216).any():
            raise FormatError("a 2:4 sparse index byte is above 215; the file is corrupt")
        codes = np.stack([b % 6, b // 6 % 6, b // 36], axis=2).reshape(rows, -1)[:, :g]
        groups = MASK_OF_CODE_2_4[codes]
        m = 4
    else:
        g = cols // 8
        bits = np.unpackbits(index, axis=1, count=7 * g, bitorder="little").reshape(rows, g, 7)
        codes = np.packbits(bits, axis=2, bitorder="little")[:, :, 0]
        if (codes >= 70).any():
            raise FormatError("a 4:8 sparse index code is above 69; the file is corrupt")
        groups = MASK_OF_CODE_4_8[codes]
        m = 8
    return np.unpackbits(groups[:, :, None], axis=2, count=m, bitorder="little").reshape(rows, cols).astype(bool)


def check_mask(mask: np.ndarray, info: SparseInfo) -> None:
    """InputError unless every row keeps exactly info.kept(cols) weights in the pattern's shape."""
    rows, cols = mask.shape
    if not info.fits(cols):
        raise InputError(f"{info.name} does not fit rows of {cols}: it needs whole groups of "
                         f"{info.pattern.m or 1} and kept weights in whole {info.value} blocks of "
                         f"{quant_info(info.value).block}; use another value type")
    if info.pattern.m:
        per = mask.reshape(rows, cols // info.pattern.m, info.pattern.m).sum(axis=2)
        if (per != info.pattern.n).any():
            raise InputError(f"the mask is not {info.pattern.name}: every group of {info.pattern.m} columns "
                             f"must keep exactly {info.pattern.n}")
    elif (mask.sum(axis=1) != info.kept(cols)).any():
        raise InputError(f"the mask must keep exactly {info.kept(cols)} weights in every row for {info.name}")


# ---------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------
def compress(w: np.ndarray, mask: np.ndarray, qtype: str, importance: np.ndarray | None = None) -> SparseQTensor:
    """Store w's kept weights (mask True) in the sparse type `qtype`; importance (cols,) weights
    each kept weight's scale search by its own column's importance."""
    info = info_of(qtype)
    w = np.ascontiguousarray(w, np.float32)
    mask = np.asarray(mask, bool)
    if w.ndim != 2 or mask.shape != w.shape:
        raise InputError(f"compress takes a (rows, cols) matrix and a mask of the same shape, got {w.shape} "
                         f"and {mask.shape}")
    index = pack_index(mask, info)
    rows, cols = w.shape
    kept = info.kept(cols)
    vals = w[mask].reshape(rows, kept)  # row-major: each row's kept weights in column order
    imp = None
    if importance is not None:
        imp = np.broadcast_to(np.asarray(importance, np.float32).reshape(1, cols), w.shape)[mask].reshape(rows, kept)
    return SparseQTensor(info.name, (rows, cols), quantize_values(vals, info.value, imp), index)


def quantize_values(vals: np.ndarray, value: str, imp: np.ndarray | None) -> QTensor:
    """(rows, K) kept weights into the ggml type `value`, each weight's scale search weighted by its
    own importance (rows, K): the block encoders take per-weight weights, `quantize` only per column."""
    if imp is None or not imp.any():
        return quantize(vals, value)
    from . import _GGML  # the block encoders: encode(blocks (B, block), weights (B, block))

    info = quant_info(value)
    imp = imp + np.float32(IMPORTANCE_FLOOR * imp.mean())
    rows, kept = vals.shape
    blocks = np.ascontiguousarray(vals, np.float32).reshape(-1, info.block)
    out = np.empty((blocks.shape[0], info.block_bytes), np.uint8)
    step = max(1, (1 << 18) // info.block)
    for b0 in range(0, len(blocks), step):
        out[b0:b0 + step] = _GGML[value][0](blocks[b0:b0 + step], imp.reshape(-1, info.block)[b0:b0 + step])
    return QTensor(value, (rows, kept), out.reshape(rows, -1))


def dequantize(st: SparseQTensor) -> np.ndarray:
    """float32 (rows, cols): the kept weights' decoded values at their positions, 0 elsewhere."""
    return _scatter(st.values.data, st.index, info_of(st.qtype), st.shape)


def dequantize_raw(values_raw, index_raw, qtype: str, shape: tuple[int, int]) -> np.ndarray:
    """float32 (rows, cols) from the two tensors a GGUF file stores for a sparse weight."""
    info = info_of(qtype)
    rows, cols = shape
    index = np.asarray(index_raw).view(np.uint8).reshape(-1)
    if (info.pattern.m and cols % info.pattern.m) or index.size != rows * info.index_row_bytes(cols):
        raise FormatError(f"{info.name} tensor of shape {shape}: the index has {index.size} bytes, expected "
                          f"{rows * info.index_row_bytes(cols)}; the file is corrupt")
    return _scatter(values_raw, index.reshape(rows, -1), info, shape)


def _scatter(values_raw, index: np.ndarray, info: SparseInfo, shape) -> np.ndarray:
    rows, cols = shape
    mask = unpack_index(index, info, cols)
    counts = mask.sum(axis=1)
    kept = int(counts[0]) if rows else 0  # unstructured: the stored count, whatever the name's percent says
    if (counts != kept).any() or (info.pattern.m and kept != info.kept(cols)):
        raise FormatError(f"the rows of a {info.name} index do not all keep the same, expected number of "
                          "weights; the file is corrupt")
    out = np.zeros((rows, cols), np.float32)
    out[mask] = _dense_raw(values_raw, info.value, (rows, kept)).reshape(-1)
    return out


def mask_of(st: SparseQTensor) -> np.ndarray:
    """(rows, cols) bool: which weights are kept."""
    return unpack_index(st.index, info_of(st.qtype), st.shape[1])
