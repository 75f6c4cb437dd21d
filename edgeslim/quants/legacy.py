"""Q4_0, Q4_1, Q5_0, Q5_1: ggml's 32-weight "legacy" blocks (block_q4_0 ... block_q5_1).

    Q4_0, 18 bytes:  byte 0..1 d (fp16) | byte 2..17 qs[16]
    Q4_1, 20 bytes:  byte 0..1 d (fp16) | byte 2..3 m (fp16) | byte 4..19 qs[16]
    Q5_0, 22 bytes:  byte 0..1 d (fp16) | byte 2..5 qh (uint32 LE) | byte 6..21 qs[16]
    Q5_1, 24 bytes:  byte 0..1 d (fp16) | byte 2..3 m (fp16) | byte 4..7 qh | byte 8..23 qs[16]

    qs[j]    = low4(code[j]) | low4(code[j + 16]) << 4     j = 0..15
    qh bit j = code[j] >> 4                                 j = 0..31 (Q5 only)

    Q4_0: w = d * (code - 8)     code in [0, 15]        Q5_0: w = d * (code - 16)    code in [0, 31]
    Q4_1: w = d * code + m       code in [0, 15]        Q5_1: w = d * code + m       code in [0, 31]

ggml's reference rule (no importance) maps the block's extreme weight to
code 0 (Q4_0/Q5_0: d = max / -8 or / -16) or spans [min, max] (Q4_1/Q5_1).
Here the symmetric types search the scale with `search.sym_subblock_fit`
(candidate scales, weighted least-squares refits, Lloyd steps), the
asymmetric ones the scale and offset with `search.asym_subblock_fit` (offset of
either sign); both finish with Lloyd steps on the fp16-rounded values, so the
(importance-)weighted error of what ggml decodes is what is minimised.

Throughput, million weights per CPU-second on one core of this 2-core machine while busy
(`python scripts/compare_quantizers.py --rows 256 --cols 4096 --no-mlx`, column "ours Mw/s",
normal / student-t / stories260K weights; GPTQ: `... --gptq --rows 1536 --cols 768`):
Q4_0 17-24, Q4_1 15-24, Q5_0 17-24, Q5_1 15-24; GPTQ 4.4-5.3.  Weighted error vs llama.cpp's own
quantizer (same importance): 0.86-0.98x.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..tables import block_fields, quant_info
from ._common import empty_blocks, f16, fp16_bytes, fp16_from_bytes, safe_div, wsum
from .search import asym_base, asym_subblock_fit, rint_clip, sym_refine_f16, sym_subblock_fit

BLOCK = 32
N_REFINE = 3  # fp16 Lloyd steps after the float search


@dataclass(frozen=True)
class Legacy:
    """One legacy type: `bits` per code; `zero` = code of 0.0 (symmetric types) or None (scale + offset)."""

    name: str
    bits: int
    zero: int | None

    @property
    def nbytes(self) -> int:
        return quant_info(self.name).block_bytes

    @property
    def fields(self) -> dict[str, slice]:
        """Byte ranges of d, m (scale + offset types), qh (5-bit types), qs: tables.block_fields."""
        return block_fields(self.name)

    @property
    def nmax(self) -> int:
        return (1 << self.bits) - 1

    @property
    def factors(self) -> tuple:
        """Symmetric scale candidates (value of the extreme weight, rounding offset), see search.py."""
        lo, hi = -self.zero, self.nmax - self.zero
        return (tuple((lo - 0.25 * k, o) for k in range(-2, 5) for o in (-0.15, 0.0, 0.15))
                + tuple((hi + 0.25 * k, 0.0) for k in range(-1, 4)))

    @property
    def asym_factors(self) -> tuple:
        """Asymmetric candidates (code value of the block's range, rounding offset), see search.py."""
        n = self.nmax
        return tuple((n - 0.5 + 0.25 * k, o) for k in range(6) for o in (-0.2, 0.0, 0.2))


Q4_0 = Legacy("Q4_0", 4, 8)
Q4_1 = Legacy("Q4_1", 4, None)
Q5_0 = Legacy("Q5_0", 5, 16)
Q5_1 = Legacy("Q5_1", 5, None)
TYPES = {t.name: t for t in (Q4_0, Q4_1, Q5_0, Q5_1)}


# ---------------------------------------------------------------------------
# bytes
# ---------------------------------------------------------------------------
def pack_nibbles(code: np.ndarray) -> np.ndarray:
    """(B, 32k) codes -> (B, 16k) bytes, each 32-block as qs[j] = low4(c[j]) | low4(c[j+16]) << 4
    (also IQ4_NL / IQ4_XS's layout)."""
    c = np.asarray(code).astype(np.uint8).reshape(code.shape[0], -1, 2, 16) & 0xF
    return (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(code.shape[0], -1)


def unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """(B, 16k) bytes -> (B, 32k) codes in [0, 15]."""
    q = qs.reshape(qs.shape[0], -1, 1, 16) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    return (q & 0xF).reshape(qs.shape[0], -1)


def _pack_qh(code: np.ndarray) -> np.ndarray:
    """(B, 32) codes -> (B, 4) bytes: bit j of the little-endian uint32 = code[j] >> 4."""
    return np.packbits((code >> 4).astype(np.uint8), axis=1, bitorder="little")


def _unpack_qh(qh: np.ndarray) -> np.ndarray:
    """(B, 4) bytes -> (B, 32) fifth bits."""
    return np.unpackbits(qh, axis=1, bitorder="little")


def pack(t: Legacy, d: np.ndarray, m: np.ndarray | None, code: np.ndarray) -> np.ndarray:
    """d (B,) and m (B,) or None (stored as fp16), code (B, 32) in [0, 2^bits) -> (B, t.nbytes) uint8."""
    code = np.asarray(code).astype(np.uint8)
    F = t.fields
    out = empty_blocks(t.name, code.shape[0])
    out[:, F["d"]] = fp16_bytes(d)
    if "m" in F:
        out[:, F["m"]] = fp16_bytes(m)
    if "qh" in F:
        out[:, F["qh"]] = _pack_qh(code)
    out[:, F["qs"]] = pack_nibbles(code)
    return out


def unpack_params(t: Legacy, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(B, t.nbytes) -> d (B,) float32, m (B,) float32 or None: the arguments of `pack` but the codes."""
    F = t.fields
    d = fp16_from_bytes(raw[:, F["d"]])[:, 0]
    return d, (fp16_from_bytes(raw[:, F["m"]])[:, 0] if "m" in F else None)


def unpack_codes(t: Legacy, raw: np.ndarray) -> np.ndarray:
    """(B, t.nbytes) -> (B, 32) uint8 codes in [0, 2^bits)."""
    F = t.fields
    code = unpack_nibbles(raw[:, F["qs"]])
    if "qh" in F:
        code = code | (_unpack_qh(raw[:, F["qh"]]) << 4)
    return code


def decode(t: Legacy, raw: np.ndarray) -> np.ndarray:
    """(B, t.nbytes) uint8 -> (B, 32) float32, computed as ggml / gguf-py do."""
    d, m = unpack_params(t, raw)
    code = unpack_codes(t, raw)
    if t.zero is not None:
        return d[:, None] * (code.astype(np.int8) - np.int8(t.zero)).astype(np.float32)
    return d[:, None] * code.astype(np.float32) + m[:, None]


# ---------------------------------------------------------------------------
# search
# ---------------------------------------------------------------------------
def encode(t: Legacy, x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """(B, 32) float32 [, weights (B, 32)] -> (B, t.nbytes) uint8."""
    if t.zero is not None:
        d, q = _encode_sym(t, x, w)
        return pack(t, d, None, q + t.zero)
    d, m, code = _encode_asym(t, x, w)
    return pack(t, d, m, code)


def _encode_sym(t: Legacy, x, w):
    lo, hi = -t.zero, t.nmax - t.zero
    xs = np.ascontiguousarray(x.T)  # (32, B) element-major
    ws = None if w is None else np.ascontiguousarray(w.T)
    s = sym_subblock_fit(xs, ws, lo, hi, t.factors)
    return sym_refine_f16(x, w, f16(s), lambda v: rint_clip(v, lo, hi), N_REFINE)


def _encode_asym(t: Legacy, x, w):
    xs = np.ascontiguousarray(x.T)
    ws = None if w is None else np.ascontiguousarray(w.T)
    a, b = asym_subblock_fit(xs, ws, t.nmax, t.asym_factors, asym_base(xs, ws), free_min=True)
    return asym_refine_f16(x, w, f16(a), f16(-b), t.nmax, N_REFINE)


def _asym_codes(x, d, m, nmax):
    return rint_clip((x - m[:, None]) * safe_div(np.float32(1), d).astype(np.float32)[:, None], 0, nmax)


def asym_refine_f16(x, w, d, m, nmax, n_iter):
    """Lloyd steps for x ~ d * code + m with fp16 d, m: re-round codes, refit (d, m) by 2x2 weighted
    least squares (rounded to fp16); per block keep whichever is better.  x (B, n); returns d, m, codes."""
    code = _asym_codes(x, d, m, nmax)
    best = wsum((x - (d[:, None] * code + m[:, None])) ** 2, w)
    for _ in range(n_iter):
        d1, m1 = _fit_dm(x, w, code, d, m)
        c1 = _asym_codes(x, d1, m1, nmax)
        err = wsum((x - (d1[:, None] * c1 + m1[:, None])) ** 2, w)
        k = err < best
        d, m, best = np.where(k, d1, d), np.where(k, m1, m), np.where(k, err, best)
        code = np.where(k[:, None], c1, code)
    return d, m, code


def _fit_dm(x, w, c, d, m):
    ww = np.ones_like(x) if w is None else w
    sw, sc, scc = ww.sum(1), (ww * c).sum(1), (ww * c * c).sum(1)
    sx, sxc = (ww * x).sum(1), (ww * x * c).sum(1)
    det = sw * scc - sc * sc
    ok = det > 0
    d1 = np.where(ok, safe_div(sw * sxc - sc * sx, det), d)
    m1 = np.where(ok, safe_div(scc * sx - sc * sxc, det), m)
    return f16(d1), f16(m1)


def encoder(name: str):
    t = TYPES[name]
    return lambda x, w=None: encode(t, x, w)


def decoder(name: str):
    t = TYPES[name]
    return lambda raw: decode(t, raw)
