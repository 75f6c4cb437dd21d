"""Affine family AFFINE{bits}_G{group}: MLX's `mx.quantize(mode="affine")` layout exactly.

Each row is cut into groups of `group` (32 or 64) weights; group g has one
scale s[g] and one bias b[g] and every weight a `bits`-bit code q in [0, 2^bits - 1]:

    w ~ s[g] * q + b[g]          (float32 arithmetic, as mx.dequantize)

Codes form one little-endian bit stream per row: code i occupies stream bits
[i*bits, (i+1)*bits), and the stream is cut into uint32 words (word k = bits
32k .. 32k+31, bit 0 = least significant).  For 3, 5 and 6 bits codes straddle
word boundaries, exactly as MLX's byte-wise packing lays them out:

    bits = 3, words 0..2 hold codes 0..31 (code p at stream bits 3p .. 3p+2):
              31 30 29   27         5    2      0
    word 0:  |c10 |  c9  | ...  |  c1  |  c0  |       bits 30..31 = low 2 bits of code 10
    word 1:  bit 0 = high bit of code 10, bits 1..30 = codes 11..20, bit 31 = low bit of code 21
    word 2:  bits 0..1 = high bits of code 21, bits 2..31 = codes 22..31

    bits = 4: word k = c[8k] | c[8k+1] << 4 | ... | c[8k+7] << 28      (8 codes, none straddle)

Stored in GGUF as three tensors (see edgeslim/tables.py): codes as I32
(rows, cols*bits/32) holding the uint32 pattern, scales and biases as F16
(rows, cols/group).  The bit packing is hand-written because numpy has no
variable-width pack; it is checked against mlx.core.quantize in the tests.

Quantizer: MLX picks s, b from the group's min and max.  We search per group
(candidate ranges, weighted least-squares fit of scale and bias, Lloyd steps),
round scale and bias to fp16 (they are stored as F16), re-fit the bias and
re-round the codes to the stored values, and keep MLX's own min/max choice as
a candidate, so the stored result is never worse than MLX's rule.
"""
from __future__ import annotations

import numpy as np

from ._common import f16, safe_div
from .search import dot0, rint_clip, sum0

F64 = np.float64


def _layout(bits: int) -> list[tuple[int, int, int]]:
    """For each code p of a 32-code chunk: (word, shift, bits spilling into word+1)."""
    out = []
    for p in range(32):
        off = p * bits
        word, shift = divmod(off, 32)
        out.append((word, shift, max(0, shift + bits - 32)))
    return out


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """(rows, cols) codes in [0, 2^bits) -> (rows, cols*bits/32) uint32 bit stream."""
    rows, cols = codes.shape
    c = codes.astype(np.uint64).reshape(rows, cols // 32, 32)
    words = np.zeros((rows, cols // 32, bits), np.uint64)
    for p, (word, shift, spill) in enumerate(_layout(bits)):
        words[:, :, word] |= c[:, :, p] << np.uint64(shift)
        if spill:
            words[:, :, word + 1] |= c[:, :, p] >> np.uint64(bits - spill)
    return (words & np.uint64(0xFFFFFFFF)).astype(np.uint32).reshape(rows, cols * bits // 32)


def unpack(words: np.ndarray, bits: int) -> np.ndarray:
    """(rows, cols*bits/32) uint32 -> (rows, cols) codes (uint32)."""
    rows, nw = words.shape
    w = words.astype(np.uint64).reshape(rows, nw // bits, bits)
    mask = np.uint64((1 << bits) - 1)
    out = np.empty((rows, nw // bits, 32), np.uint32)
    for p, (word, shift, spill) in enumerate(_layout(bits)):
        v = w[:, :, word] >> np.uint64(shift)
        if spill:
            v |= w[:, :, word + 1] << np.uint64(bits - spill)
        out[:, :, p] = v & mask
    return out.reshape(rows, nw // bits * 32)


def codes_for(w: np.ndarray, scales: np.ndarray, biases: np.ndarray, bits: int, group: int) -> np.ndarray:
    """MLX's code rule for given scales/biases: clip(rint((w - b) / s), 0, 2^bits - 1), in float32."""
    rows, cols = w.shape
    x = w.astype(np.float32).reshape(rows, cols // group, group)
    s = scales.astype(np.float32)[..., None]
    b = biases.astype(np.float32)[..., None]
    q = np.clip(np.rint(safe_div(x - b, s)), 0, (1 << bits) - 1)
    return q.reshape(rows, cols).astype(np.uint32)


def dequantize(codes: np.ndarray, scales: np.ndarray, biases: np.ndarray, bits: int, group: int) -> np.ndarray:
    """float32 (rows, cols): scale * q + bias, as mx.dequantize computes it."""
    q = unpack(np.asarray(codes).view(np.uint32), bits).astype(np.float32)
    rows, cols = q.shape
    s = scales.astype(np.float32)[..., None]
    b = biases.astype(np.float32)[..., None]
    return (s * q.reshape(rows, cols // group, group) + b).reshape(rows, cols)


# --------------------------------------------------------------------------
# quantizer
# --------------------------------------------------------------------------
def _mlx_rule(x: np.ndarray, nbins: int) -> tuple[np.ndarray, np.ndarray]:
    """MLX's scale/bias from the group min and max (CPU `quantize` in mlx/backend/cpu/quantized.cpp).

    x: (group, G) element-major.
    """
    lo, hi = x.min(axis=0), x.max(axis=0)
    mask = np.abs(lo) > np.abs(hi)
    scale = np.maximum((hi - lo) / np.float32(nbins), np.float32(1e-7))
    scale = np.where(mask, scale, -scale)
    edge = np.where(mask, lo, hi)
    q0 = np.rint(edge / scale)
    nz = q0 != 0
    return np.where(nz, safe_div(edge, q0), scale).astype(np.float32), np.where(nz, edge, 0).astype(np.float32)


def _fit(x, w, L, base):
    """Weighted least-squares (scale, bias, error) for x ~ scale * L + bias, from per-group sums (float64)."""
    sw, sx, sxx = base
    sl, sll, sxl = (v.astype(F64) for v in (sum0(L, w), dot0(L, L, w), dot0(L, x, w)))
    D = sw * sll - sl * sl
    a = safe_div(sw * sxl - sl * sx, D)
    c = safe_div(sx - a * sl, sw)
    return a, c, sxx - a * sxl - c * sx  # error at the least-squares optimum


def _requant(x, a, c, nbins):
    return rint_clip((x - c) * safe_div(np.float32(1), a).astype(np.float32), 0, nbins)


def _err(x, w, a, c, L):
    r = x - (a * L + c)
    return dot0(r, r, w)


GRIDS = {}


def grid(bits: int) -> tuple[tuple[float, float], ...]:
    """Candidate (code value of the group's range, rounding offset) pairs for the group search."""
    if bits not in GRIDS:
        nbins = (1 << bits) - 1
        span = max(1.0, nbins / 15)
        if bits <= 4:  # few levels: the rounding offset matters as much as the range
            GRIDS[bits] = tuple((nbins + span * t, o) for t in np.linspace(-0.6, 0.6, 7) for o in (-0.25, 0.0, 0.25))
        else:
            GRIDS[bits] = tuple((nbins + span * t, 0.0) for t in np.linspace(-0.7, 0.7, 15))
    return GRIDS[bits]


def quantize_groups(x: np.ndarray, w: np.ndarray | None, bits: int, n_lloyd: int = 2):
    """x: (group, G) float32 element-major -> scale, bias (G,) fp16-exact float32, codes (group, G) float32.

    Grid stage on sufficient statistics (float fit per candidate), then exact
    evaluation of fp16-rounded candidates: MLX's own rule, the best float fit,
    and Lloyd steps (least-squares refit on the current codes, bias refit for
    the stored scale), keeping per group whatever has the lowest error.
    """
    nbins = (1 << bits) - 1
    sw = np.full(x.shape[1], x.shape[0], F64) if w is None else w.sum(axis=0).astype(F64)
    base = (sw, sum0(x, w).astype(F64), dot0(x, x, w).astype(F64))
    lo = x.min(axis=0)
    xs = (x - lo) * safe_div(np.float32(1), x.max(axis=0) - lo).astype(np.float32)  # in [0, 1]
    fit_err = np.full(x.shape[1], np.inf)
    fit_a = np.zeros(x.shape[1])
    fit_c = np.zeros(x.shape[1])
    for f, off in grid(bits):
        a, c, e = _fit(x, w, rint_clip(xs * np.float32(f) + np.float32(off), 0, nbins), base)
        better = e < fit_err
        fit_err, fit_a, fit_c = np.where(better, e, fit_err), np.where(better, a, fit_a), np.where(better, c, fit_c)

    best = None

    def consider(a, c):
        nonlocal best
        a, c = f16(a), f16(c)
        L = _requant(x, a, c, nbins)
        e = _err(x, w, a, c, L)
        if best is None:
            best = [e, a, c, L]
            return
        k = e < best[0]
        best = [np.where(k, e, best[0]), np.where(k, a, best[1]), np.where(k, c, best[2]), np.where(k, L, best[3])]

    consider(*_mlx_rule(x, nbins))
    consider(fit_a, fit_c)
    for _ in range(n_lloyd):
        a, c, _ = _fit(x, w, best[3], base)
        consider(a, c)
        consider(best[1], safe_div(base[1] - best[1] * sum0(best[3], w), sw))  # bias for the stored scale
    return best[1], best[2], best[3]


def quantize(w: np.ndarray, bits: int, group: int, importance: np.ndarray | None = None, chunk: int = 1 << 18):
    """(rows, cols) float32 -> codes uint32 (rows, cols*bits/32), scales, biases float16 (rows, cols/group)."""
    rows, cols = w.shape
    gpr = cols // group  # groups per row
    x = w.reshape(rows * gpr, group)
    gw = None if importance is None else importance.astype(np.float32).reshape(gpr, group)
    scales = np.empty(x.shape[0], np.float32)
    biases = np.empty(x.shape[0], np.float32)
    codes = np.empty(x.shape, np.uint32)
    step = max(1, chunk // group)
    for g0 in range(0, x.shape[0], step):
        g1 = min(g0 + step, x.shape[0])
        xe = np.ascontiguousarray(x[g0:g1].T)  # (group, G)
        we = None if gw is None else np.ascontiguousarray(gw[np.arange(g0, g1) % gpr].T)
        scales[g0:g1], biases[g0:g1], L = quantize_groups(xe, we, bits)
        codes[g0:g1] = L.T
    packed = pack(codes.reshape(rows, cols), bits)
    shape = (rows, gpr)
    return packed, scales.astype(np.float16).reshape(shape), biases.astype(np.float16).reshape(shape)
