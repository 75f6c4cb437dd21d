"""The shared driver: activation quantization, row-parallel mat-vec, tiled prefill, the public API.

    prepare(qtype, data, shape, scales=None, biases=None, index=None) -> Packed   # repack once, at load
    linear(p, x)       x (T, cols) float32 -> (T, rows) float32
    dequantize(p)      -> (rows, cols) float32   (bit-exact with gguf / MLX formulas)
    embed_rows(p, ids) -> (len(ids), cols) float32
    concat_rows(packs) -> one Packed of stacked rows (fused q|k|v, gate|up)

Decode (T <= SMALL_T_*): `_matvec` quantizes x once (`quant_x`), then runs
the spec's row kernel (`rows._row`, emitted by the weight's family module)
for every row, blocks of ROW_BLOCK rows under `prange`, TMAX activations per pass so each decoded
weight block serves several activations.  Prefill (larger T): on AVX512-VNNI hosts, from
tiled.MIN_T activations on, the super-block and 32-wide types run on decoded row tiles
(tiled.py); other types and AVX2 hosts the row kernels (measured faster, see INT_PREFILL_T); elsewhere dequantize
TILE_ELEMS weights (whole rows) at a time in kernel order and multiply with BLAS.  The njit functions are `cache=True`: a second start does not recompile.
A family registered with `spec.register_own` (sparse.py) gets its weights and
packed objects handed over by every function of the API.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter

import numpy as np
from numba import get_num_threads, prange, typeof
from numba.core.typing.typeof import Purpose

from ...errors import UnsupportedError
from ...tables import quant_info
from ..threads import PARALLEL, SERIAL, Chooser, serial_and_parallel
from . import tiled
from .rows import TMAX, _deq_row, _row
from .xquant import empty_i8_64, quant_x
from .emit import USE_AVX2
from .spec import BASE, OWN, Spec, family, variant

# Largest T that still uses the packed kernels; above it: dequantized row tiles + BLAS.
# Measured on the 94M bench model (2-core Zen, 2 threads, 128-token prompt): the int8
# kernels 283 tok/s, BLAS on 256-row tiles 283, on 16 MB tiles 514 (Q4_K); Q8_0 246 -> 507.
# Large tiles matter: OpenBLAS splits one big product across threads far better.
SMALL_T_QUANT = 64
SMALL_T_8BIT = 32  # Q8_0 / AFFINE8: one float fma per 32 weights per activation, so BLAS wins sooner
SMALL_T_FLOAT = 8
# On x86 with AVX2 (and VNNI where present) the packed int8 kernels beat the dequantize + BLAS path
# at every T for every type: whole-model prefill of a 512-token prompt, TinyLlama-shaped llama.cpp
# files, 2 threads (Zen 5), BLAS tiles -> int kernels: Q4_0 88 -> 167 tok/s, Q4_K_M 87 -> 175, Q8_0
# 88 -> 156, IQ4_NL 90 -> 169, IQ2_XXS 98 -> 127, IQ3_XXS 98 -> 112, IQ1_S 97 -> 115.  IQ3_S
# (its 8-index assembly per chunk) first measured 97 -> 75 and used BLAS; with one parallel region
# per mat-mul (ROW_BLOCK) and 512-bit steps, its 512 x 2048 by 5632 x 2048 product takes 38 ms in
# the int kernels against 86 ms on BLAS tiles (2 threads, quiet), so every type uses them.
INT_PREFILL_T = 1 << 62
TILE_ELEMS = 1 << 22  # float32 weights per dequantized tile on the prefill path (16 MB)
# Weights x activations below which a call runs serially: where the parallel copy first won,
# best of 15 alternating repeats (scripts/probe_parallel_threshold.py, 2 threads, Q8_0 and Q4_K).
PARALLEL_MIN_WORK = 1 << 19
DEQ_WORK = 4  # one dequantized weight (a float store) counts as this much mat-vec work
TILE_MIN_ROWS = 64
# Rows per parallel job of a mat-mul: each job runs every TMAX-activation pass over its rows, so a
# prompt is one parallel region per mat-mul, not one per pass.  512 x 2048 by 5632 x 2048 Q4_K, 2
# threads, while other programs held the cores: 244 ms with a region per pass, 49 ms with row
# blocks; the same on one thread (50 ms), so only the regions' barriers differ.
ROW_BLOCK = 64


def _matvec_body(spec, p0, p1, p2, p3, p4, x, rows, nq, nd, ns, xblk, sgroup, unit, order):
    """(T, rows) = x W^T.  Quantizes x into (xq, xd, xs) when xblk > 0 (float
    weights, xblk == 0, read x itself as xs), then, parallel over blocks of ROW_BLOCK
    rows, TMAX activations per pass.  np.empty only: a numba np.zeros would be its own parfor."""
    T = x.shape[0]
    y = np.empty((T, rows), np.float32)
    xq = empty_i8_64(T, nq)
    xd = np.empty((T, nd), np.float32)
    xs = x
    if xblk > 0:
        xs = np.empty((T, ns), np.float32)
        quant_x(x, xblk, sgroup, unit, order, xq, xd, xs)
    for blk in prange((rows + ROW_BLOCK - 1) // ROW_BLOCK):  # one parallel region for every pass
        r0 = blk * ROW_BLOCK
        for t0 in range(0, T, TMAX):
            t1 = min(T, t0 + TMAX)
            xq_, xd_, xs_, y_ = xq[t0:t1], xd[t0:t1], xs[t0:t1], y[t0:t1]
            for r in range(r0, min(rows, r0 + ROW_BLOCK)):
                _row(spec, p0[r], p1[r], p2[r], p3[r], p4[r], xq_, xd_, xs_, y_, r)
    return y


def _dequant_rows_body(spec, p0, p1, p2, p3, p4, ids, out):
    """out[i] = row ids[i], dequantized in kernel order."""
    for i in prange(ids.shape[0]):
        r = ids[i]
        _deq_row(spec, p0[r], p1[r], p2[r], p3[r], p4[r], out[i])


# Each twice: a parallel region (thread wake-up, barrier) can cost more than a call takes;
# CHOOSER (../threads.py) picks the copy per call: serial below PARALLEL_MIN_WORK (weights x
# activations), above it whichever has been cheaper lately on this machine.
_matvec_serial, _matvec = serial_and_parallel(_matvec_body, fastmath=True)
_MATVEC = {SERIAL: _matvec_serial, PARALLEL: _matvec}
_dequant_rows_serial, _dequant_rows = serial_and_parallel(_dequant_rows_body)
CHOOSER = Chooser(PARALLEL_MIN_WORK)


# =============================================================================
# Public API
# =============================================================================
@dataclass(eq=False)
class Packed:
    """A weight matrix repacked for the kernels.

    shape: (rows, cols) of the float matrix; colsp: padded row length the kernels see.
    planes: five (rows, n) uint8 arrays (layouts in planes.py and the family modules).
    perm: kernel order -> element index (colsp,), or None when the order is the stored one.
    """

    qtype: str
    shape: tuple[int, int]
    spec: Spec
    planes: tuple[np.ndarray, ...]
    colsp: int
    perm: np.ndarray | None = None
    _inv: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        self._entries = {}
        self._single = variant(self.spec, batched=False)
        self._batched = variant(self.spec, batched=True)
        fam = family(self.spec)
        self._x_widths = fam.x_widths(self.spec, self.colsp, self.planes)
        self._order = _x_order(self.spec)
        lay = tiled.layout(self.spec, self.colsp)
        self._tiles = None if lay is None else (lay.order, lay.n_scale, lay.n_block, lay.n_min)

    @property
    def nbytes(self) -> int:
        return int(sum(p.nbytes for p in self.planes))

    def with_portable(self, portable: bool = True, vnni: bool = True, avx512: bool = True,
                      tiles: bool = True) -> "Packed":
        """The same weights run through the portable (non-x86-intrinsic) kernel variant, or
        (vnni=False) through the plain AVX2 steps where the host has VNNI, or (avx512=False)
        through the 256-bit batched kernels where the host has AVX-512BW; tiles=False keeps
        prompts on the row kernels instead of the tiled path (tiled.py)."""
        sp = variant(self.spec, portable=portable, vnni=vnni, avx512=avx512)
        out = Packed(self.qtype, self.shape, sp, self.planes, self.colsp, self.perm, self._inv)
        if not tiles:
            out._tiles = None
        return out


_NO_ORDER = np.zeros(0, np.int64)
_ORDERS: dict[str, np.ndarray] = {}


def _x_order(spec: Spec) -> np.ndarray:
    """The family's kernel order inside a unit (kernel position -> element), or an empty array."""
    if spec.name not in _ORDERS:
        order = getattr(family(spec), "x_order", lambda s: None)(spec)
        _ORDERS[spec.name] = _NO_ORDER if order is None else np.ascontiguousarray(order, np.int64)
    return _ORDERS[spec.name]


def _perm(spec: Spec, colsp: int) -> np.ndarray | None:
    """Kernel position -> element over a whole row (whole units reordered, a partial last unit not)."""
    order = _x_order(spec)
    if order.size == 0:
        return None
    nmain = colsp - colsp % spec.unit
    perm = np.arange(colsp)
    perm[:nmain] = (np.arange(0, nmain, spec.unit)[:, None] + order[None, :]).reshape(-1)
    return perm


def _canonical(qtype: str) -> str:
    try:
        return quant_info(qtype).name
    except ValueError as e:
        raise UnsupportedError(str(e)) from None


def prepare(qtype: str, data, shape, scales=None, biases=None, index=None) -> Packed:
    """Repack one stored weight for the kernels (done once at load).

    qtype: "Q4_K", "Q8_0", "F16", "AFFINE4_G64", "Q4_K@2:4", ... (edgeslim.tables names).
    data: the stored bytes (numpy array / buffer); for affine: the packed uint32 codes.
    shape: (rows, cols) of the float matrix.  scales/biases: affine float16 (rows, cols/group).
    index: a sparse type's position index; such weights go to the family that claims them.
    """
    own = next((m for m in OWN.values() if m.claims(qtype, index)), None)
    if own is not None:
        return own.prepare(qtype, data, shape, index)
    name = _canonical(qtype)
    rows, cols = (int(v) for v in shape)
    if name not in BASE:
        raise UnsupportedError(f"no CPU kernel for weight type {name}; re-convert the model with a supported type")
    spec = BASE[name]
    planes, colsp = family(spec).repack(spec, data, rows, cols, scales, biases)
    perm = _perm(spec, colsp)
    inv = None if perm is None else np.argsort(perm)
    return Packed(name, (rows, cols), spec, planes, colsp, perm, inv)


def concat_rows(packs: list[Packed]) -> Packed | None:
    """One Packed holding the rows of `packs` stacked (a fused projection such as
    q|k|v), or None when they differ in type or row length.  One call then
    quantizes the activations once and runs one parallel region for all of them."""
    first = packs[0]
    if type(first) in OWN:
        return OWN[type(first)].concat_rows(packs)
    if any(type(p) is not Packed or p.qtype != first.qtype or p.colsp != first.colsp or p.shape[1] != first.shape[1]
           or (p.perm is None) != (first.perm is None) for p in packs):
        return None
    planes = tuple(np.concatenate([p.planes[i] for p in packs], axis=0) for i in range(len(first.planes)))
    rows = sum(p.shape[0] for p in packs)
    return Packed(first.qtype, (rows, first.shape[1]), first.spec, planes, first.colsp, first.perm, first._inv)


def _fast_call(p: Packed, key, disp, *args):
    """disp(*args), through the compiled entry point once known (skips numba's
    per-call argument typing, ~3 us, mostly for the Spec argument).  Arguments
    for one (p, key) must keep their types; callers pass fresh C-contiguous,
    aligned, writeable arrays and Python ints."""
    ent = p._entries.get(key)
    if ent is not None:
        return ent(*args)
    out = disp(*args)
    try:
        sig = tuple(typeof(a, Purpose.argument) for a in args)
        p._entries[key] = disp.overloads[sig].entry_point
    except (KeyError, AttributeError):  # numba internals moved: keep dispatching
        p._entries[key] = disp
    return out


def _compile_copies(fns, args) -> None:
    """Compile (or load from numba's cache) both the serial and the parallel copy for these argument
    types before either runs: the chooser's first pick is serial and every weight's first call goes
    untimed, so the parallel copy was first compiled in the middle of the second long prompt (a
    20 s stall of a 512-token prefill, and the compiler's memory in that process's peak RSS)."""
    sig = tuple(typeof(a, Purpose.argument) for a in args)
    for f in (fns[SERIAL], fns[PARALLEL]):
        if sig not in f.overloads:
            f.compile(sig)


def _matvec_small(p: Packed, x: np.ndarray) -> np.ndarray:
    """(T, cols) -> (T, rows) with the packed-integer (or F16/BF16) kernels."""
    sp = p.spec
    if x.shape[1] != p.colsp:
        x = np.pad(x, ((0, 0), (0, p.colsp - x.shape[1])))
    nq, nd, ns = p._x_widths
    batched = x.shape[0] > 1
    work = p.shape[0] * p.colsp * x.shape[0]
    par, bucket = CHOOSER.pick(work, batched)
    key = ("mv", batched, par)
    args = (p._batched if batched else p._single, *p.planes, x, p.shape[0], nq, nd, ns, sp.xblk, sp.sgroup,
            sp.unit, p._order)
    fns = _MATVEC
    if p._tiles is not None and x.shape[0] >= tiled.MIN_T:  # prompts: decoded row tiles, tiled.py
        key, fns, args = ("tile", par), tiled.TILED, (*args, *p._tiles)
    if bucket is None or key not in p._entries:  # untimed: small, or its first call (may compile)
        if bucket is not None:
            _compile_copies(fns, args)
        return _fast_call(p, key, fns[par], *args)
    t0 = perf_counter()
    y = p._entries[key](*args)
    CHOOSER.record(bucket, par, perf_counter() - t0, work)
    return y


def _dequant_kernel_order(p: Packed, ids: np.ndarray) -> np.ndarray:
    out = np.empty((len(ids), p.colsp), np.float32)
    if len(ids):
        par = len(ids) * p.colsp * DEQ_WORK >= CHOOSER.floor and get_num_threads() > 1
        _fast_call(p, ("deq", par), _dequant_rows if par else _dequant_rows_serial, p._single, *p.planes, ids, out)
    return out


def _small_t(spec: Spec) -> int:
    if spec.xblk == 0:
        return SMALL_T_FLOAT
    if USE_AVX2:
        return INT_PREFILL_T
    return SMALL_T_8BIT if spec.bits == 8 else SMALL_T_QUANT


def linear(p: Packed, x: np.ndarray) -> np.ndarray:
    """x (T, cols) float32 -> (T, rows) float32 = x @ W.T.

    T <= SMALL_T_QUANT (8-bit codes: SMALL_T_8BIT, F16/BF16: SMALL_T_FLOAT; on AVX2 hosts every T
    for the integer types): the packed-integer (F16/BF16: float) kernels, weights never
    dequantized, int8 activations.  Larger T:
    dequantize TILE_ELEMS weights (whole rows) at a time and multiply with BLAS (exact weights).
    F32 weights always use BLAS.
    """
    if type(p) in OWN:
        return OWN[type(p)].linear(p, x)
    x = np.asarray(x)
    if not (x.dtype == np.float32 and x.flags.c_contiguous and x.flags.aligned and x.flags.writeable):
        x = np.array(x, dtype=np.float32, order="C")
    if x.ndim == 1:
        return linear(p, x[None])[0]
    rows, cols = p.shape
    if x.shape[1] != cols:
        raise ValueError(f"linear: x has {x.shape[1]} columns, weight {p.qtype} {p.shape} needs {cols}")
    T = x.shape[0]
    if p.qtype == "F32":
        w = p.planes[0].view(np.float32)[:, :cols]
        return np.dot(x, w.T)
    if T <= _small_t(p.spec):
        return _matvec_small(p, x)
    xk = x if p.colsp == cols else np.pad(x, ((0, 0), (0, p.colsp - cols)))
    if p.perm is not None:
        xk = xk[:, p.perm]
    y = np.empty((T, rows), np.float32)
    step = max(TILE_MIN_ROWS, TILE_ELEMS // p.colsp)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        tile = _dequant_kernel_order(p, np.arange(r0, r1, dtype=np.int64))
        y[:, r0:r1] = xk @ tile.T
    return y


def embed_rows(p: Packed, ids) -> np.ndarray:
    """Rows `ids` of the weight, dequantized: (len(ids), cols) float32 (token embedding lookup)."""
    if type(p) in OWN:
        return OWN[type(p)].embed_rows(p, ids)
    ids = np.array(ids, dtype=np.int64).reshape(-1)
    rows, cols = p.shape
    if ids.size and (ids.min() < 0 or ids.max() >= rows):
        raise IndexError(f"embed_rows: id out of range [0, {rows})")
    out = _dequant_kernel_order(p, ids)
    if p.perm is not None:
        out = out[:, p._inv]
    return out[:, :cols] if p.colsp != cols else out


def dequantize(p: Packed) -> np.ndarray:
    """The whole weight as float32 (rows, cols)."""
    if type(p) in OWN:
        return OWN[type(p)].dequantize(p)
    return embed_rows(p, np.arange(p.shape[0]))
