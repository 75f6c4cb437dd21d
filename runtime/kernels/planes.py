"""Kernel planes: the byte layout every row kernel reads, and the numpy helpers that build it.

Every weight is held as five byte planes `(p0, p1, p2, p3, p4)`, each
`(rows, n)` uint8 and C-contiguous (an unused plane has n = 0), so that a
row's codes are one contiguous stream and a 32-byte load gives the codes of
32 weights ("a chunk") after at most a shift and a mask.  Code planes (one
32-byte vector = codes of 1, 2, 4 or 8 chunks of 32 elements):

    nib    32 bytes -> 2 chunks    chunk 2k = byte & 0xF, chunk 2k+1 = byte >> 4
    crumb  32 bytes -> 4 chunks    chunk s  = (byte >> 2s) & 3
    bit    32 bytes -> 8 chunks    chunk k  = (byte >> k) & 1

Which plane holds what is each family's business (its module docstring draws
it); block field offsets come from `edgeslim.tables.block_fields`.  Repacking
runs once per weight at load, in numpy, row chunk by row chunk where it
allocates temporaries.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ...errors import FormatError, UnsupportedError
from ...tables import block_fields, quant_info

PAD_GROUPS = 8  # per-group scale/bias rows are padded to a multiple of this (one f32x8 vector)
CHUNK_WEIGHTS = 1 << 20  # repacks that expand codes work on row chunks of about this many weights
REPACK_THREADS = min(4, os.cpu_count() or 1)


def empty(rows: int) -> np.ndarray:
    return np.zeros((rows, 0), np.uint8)


def planes(*arrs) -> tuple[np.ndarray, ...]:
    """Five C-contiguous (rows, n) uint8 planes; None -> empty plane."""
    rows = next(a.shape[0] for a in arrs if a is not None)
    out = [(empty(rows) if a is None else np.ascontiguousarray(a).view(np.uint8).reshape(rows, -1)) for a in arrs]
    return tuple(out + [empty(rows)] * (5 - len(out)))


def by_rows(rows: int, cols: int, fn) -> tuple[np.ndarray, ...]:
    """fn(r0, r1) -> the five planes of rows r0..r1, run over row chunks of about CHUNK_WEIGHTS
    weights and gathered into one set of planes.  Chunking bounds a repack's temporaries (a
    token embedding of a 7B model would otherwise expand to several hundred MB of codes); the
    chunks run on REPACK_THREADS threads (numpy releases the GIL inside its loops), at most
    two chunks in flight per thread."""
    step = max(1, CHUNK_WEIGHTS // max(cols, 1))
    first = fn(0, min(rows, step))
    if rows <= step:
        return first
    out = tuple(np.empty((rows, a.shape[1]), np.uint8) for a in first)
    for o, a in zip(out, first):
        o[:step] = a

    def one(r0):
        r1 = min(rows, r0 + step)
        for o, a in zip(out, fn(r0, r1)):
            o[r0:r1] = a

    starts = list(range(step, rows, step))
    if REPACK_THREADS <= 1 or len(starts) == 1:
        for r0 in starts:
            one(r0)
        return out
    with ThreadPoolExecutor(REPACK_THREADS) as pool:
        for i in range(0, len(starts), 2 * REPACK_THREADS):
            list(pool.map(one, starts[i:i + 2 * REPACK_THREADS]))
    return out


def as_bytes(data) -> np.ndarray:
    """Any buffer / array -> flat uint8 view (no copy)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(data, np.uint8)


def blocks(data, qtype: str, rows: int, cols: int) -> np.ndarray:
    """Raw ggml bytes -> (rows, n_blocks, block_bytes) uint8 view, sizes checked."""
    info = quant_info(qtype)
    raw = as_bytes(data)
    if cols % info.block:
        raise UnsupportedError(f"{qtype} weight with {cols} columns: ggml needs a multiple of {info.block}; "
                               f"re-quantize this tensor to another type")
    need = rows * info.nbytes(cols)
    if raw.size != need:
        raise FormatError(f"{qtype} weight ({rows}x{cols}) has {raw.size} bytes, expected {need}; the file is corrupt")
    return raw.reshape(rows, cols // info.block, info.block_bytes)


def fields(b: np.ndarray, qtype: str) -> dict[str, np.ndarray]:
    """(rows, n_blocks, block_bytes) -> {field name: (rows, n_blocks, field bytes) view}."""
    return {name: b[..., sl] for name, sl in block_fields(qtype).items()}


def pad_groups(a: np.ndarray, n_groups: int) -> np.ndarray:
    """(rows, g) per-group values -> (rows, n_groups rounded up to PAD_GROUPS), zero-padded."""
    ngp = -(-n_groups // PAD_GROUPS) * PAD_GROUPS
    return np.pad(a, ((0, 0), (0, ngp - a.shape[1])))


def pack_field(q: np.ndarray, unit: int, shift: int, width: int) -> np.ndarray:
    """Codes (rows, colsp) in element order -> one plane of bits [shift, shift+width) in
    interleaved kernel order: unit u, chunk c, lane j holds element u*U + j*S + c (S = U/32).
    A 32-byte vector packs 8/width chunks; chunk k of vector v (c = v*per + k) sits at bits
    width*k of each byte."""
    rows, colsp = q.shape
    s, per = unit // 32, 8 // width
    q5 = q.reshape(rows, colsp // unit, 32, s // per, per)  # [.., j, v, k] = element j*S + v*per + k
    mask = (1 << width) - 1
    acc = np.zeros(q5.shape[:4], np.uint8)
    for k in range(per):
        acc |= ((q5[..., k] >> shift) & mask) << (width * k)
    return np.ascontiguousarray(acc.transpose(0, 1, 3, 2)).reshape(rows, -1)  # [.., v, j]

