"""Decode speed of edgeslim's sparse types against the dense type of about the same size, same run.

Kernels (default): for each sparse type and shape, random valid weights (value blocks of the type,
a random index of the pattern), enough copies to stream from DRAM as real decoding does, the best
time per mat-vec (T=1) of `kernels.linear`; then the same for the dense ggml type whose bits per
weight are closest (the "equal bytes" peer). Printed: microseconds, stored GB/s, and the ratio
dense time / sparse time (> 1: the sparse file decodes faster at about equal size).

Models (--models A.gguf B.gguf ...): greedy decode tokens per second of whole files with the numba
backend, best of --reps runs, each file against the first one.

    python scripts/bench_sparse.py                                  # every sparse type, two shapes
    python scripts/bench_sparse.py --types Q4_K@2:4 Q8_0@50% --shapes 4096x4096 --reps 20
    python scripts/bench_sparse.py --models dense.gguf pruned.gguf --tokens 64
    NUMBA_NUM_THREADS=1 python scripts/bench_sparse.py --cpu-time     # 1 thread, CPU-time clock

Timing note: a shared machine preempts threads; take the best of several runs and label the numbers.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from edgeslim.quants import sparse as ref
from edgeslim.runtime import kernels as K
from edgeslim.tables import quant_info, sparse_info

SHAPES = ((4096, 4096), (4096, 11008))
TYPES = ("Q4_K@2:4", "Q6_K@2:4", "Q8_0@2:4", "Q4_K@4:8", "Q6_K@4:8", "Q4_K@50%", "Q6_K@50%", "Q8_0@50%",
         "Q4_K@70%")
DENSE = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0")
STREAM_BYTES = 160 << 20  # weight bytes cycled through per timing round (> last-level cache)
_F16_AT = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "Q8_0": (0,)}


def random_blocks(qtype: str, rows: int, cols: int, rng) -> np.ndarray:
    """(rows, bytes) valid ggml blocks of `qtype` with small fp16 scales, codes random."""
    info = quant_info(qtype)
    nb = cols // info.block
    raw = rng.integers(0, 256, (rows, nb, info.block_bytes), dtype=np.uint8)
    for off in _F16_AT[qtype]:
        raw[..., off:off + 2] = rng.uniform(-0.01, 0.01, (rows, nb)).astype(np.float16).view(np.uint8).reshape(
            rows, nb, 2)
    return raw.reshape(rows, -1)


def random_sparse(qtype: str, rows: int, cols: int, rng):
    """A SparsePacked of random valid values and a random mask of the type's pattern."""
    info = sparse_info(qtype)
    r = rng.random((rows, cols))
    if info.pattern.m:
        n, m = info.pattern.n, info.pattern.m
        keep = np.argsort(r.reshape(rows, -1, m), axis=2)[:, :, :n]
        mask = np.zeros((rows, cols // m, m), bool)
        np.put_along_axis(mask, keep, True, axis=2)
    else:
        keep = np.argsort(r, axis=1)[:, :info.kept(cols)]
        mask = np.zeros((rows, cols), bool)
        np.put_along_axis(mask, keep, True, axis=1)
    index = ref.pack_index(mask.reshape(rows, cols), info)
    return K.prepare(qtype, random_blocks(info.value, rows, info.kept(cols), rng), (rows, cols), index=index)


def bpw(qtype: str, cols: int) -> float:
    sp = sparse_info(qtype)
    return 8.0 * (sp.nbytes(1, cols) if sp else quant_info(qtype).nbytes(cols)) / cols


def peer(qtype: str, cols: int) -> str:
    """The dense type with the closest bits per weight (on a tie the smaller one)."""
    return min(DENSE, key=lambda d: (abs(bpw(d, cols) - bpw(qtype, cols)), bpw(d, cols)))


CLOCK = time.perf_counter


def time_linear(make, rows: int, cols: int, reps: int, rng) -> tuple[float, int]:
    """(best seconds per T=1 call cycling through copies larger than the cache, stored bytes of one)."""
    first = make()
    nbytes = int(first.nbytes)
    packs = [first] + [make() for _ in range(max(0, STREAM_BYTES // max(nbytes, 1) - 1))]
    x = rng.standard_normal((1, cols)).astype(np.float32)
    K.linear(first, x)  # compile / warm
    best = float("inf")
    for _ in range(reps):
        t0 = CLOCK()
        for p in packs:
            K.linear(p, x)
        best = min(best, (CLOCK() - t0) / len(packs))
    return best, nbytes


def bench_kernels(types, shapes, reps: int) -> None:
    rng = np.random.default_rng(0)
    print(f"{'sparse type':<11} {'shape':>11} {'bpw':>6} {'us':>9} {'GB/s':>6}   {'dense peer':<6} {'bpw':>6} "
          f"{'us':>9} {'GB/s':>6}   dense/sparse")
    for rows, cols in shapes:
        for qt in types:
            if not sparse_info(qt).fits(cols):
                print(f"{qt:<11} {rows}x{cols}: does not fit rows of {cols}")
                continue
            ts, bs = time_linear(lambda: random_sparse(qt, rows, cols, rng), rows, cols, reps, rng)
            d = peer(qt, cols)
            td, bd = time_linear(lambda: K.prepare(d, random_blocks(d, rows, cols, rng), (rows, cols)),
                                 rows, cols, reps, rng)
            print(f"{qt:<11} {rows:>5}x{cols:<5} {bpw(qt, cols):>6.3f} {ts * 1e6:>9.1f} {bs / ts / 1e9:>6.2f}   "
                  f"{d:<10} {bpw(d, cols):>6.3f} {td * 1e6:>9.1f} {bd / td / 1e9:>6.2f}   {td / ts:>6.2f}x")


def bench_models(paths, tokens: int, reps: int) -> None:
    import edgeslim

    base = None
    for path in paths:
        m = edgeslim.load(path, backend="numba")
        m.generate("Once upon a time", max_tokens=4, temperature=0)  # compile / warm
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            m.generate("Once upon a time", max_tokens=tokens, temperature=0, stop=[])
            best = min(best, time.perf_counter() - t0)
        tps = tokens / best
        base = base or tps
        print(f"{path}: {tps:.1f} tok/s (best of {reps}, {tokens} tokens incl. a 5-token prompt), "
              f"{tps / base:.2f}x the first file")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--types", nargs="+", default=list(TYPES))
    ap.add_argument("--shapes", nargs="+", default=[f"{r}x{c}" for r, c in SHAPES], help="ROWSxCOLS")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--models", nargs="+", help="GGUF files: whole-model decode tok/s instead of kernels")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--cpu-time", action="store_true", help="time with the process CPU clock (use 1 thread)")
    args = ap.parse_args()
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    if args.models:
        bench_models(args.models, args.tokens, args.reps)
    else:
        bench_kernels(args.types, [tuple(int(v) for v in s.split("x")) for s in args.shapes], args.reps)


if __name__ == "__main__":
    main()
