"""Where does a parallel mat-vec region start to pay?  Serial vs parallel kernels per matrix size.

For each type and (rows, cols) it times `kernels.linear` (T activations) once
through the serial copy of the driver and once through the parallel one,
alternating the two in every repeat (so a load change on a shared machine
hits both), and prints the median time per call of each and their ratio.
The smallest size whose parallel median beats the serial one, in weights x
activations, is what `kernels.driver.PARALLEL_MIN_WORK` should be near (best of repeats: the
quiet moments; the median shows how often a busy machine makes regions wait).

    NUMBA_NUM_THREADS=2 python scripts/probe_parallel_threshold.py
    NUMBA_NUM_THREADS=2 python scripts/probe_parallel_threshold.py --types Q4_K --T 1 4 --repeats 31

Weights are small enough to stay in cache here (as a tiny model's do); the
numbers are for this machine at this moment: say how busy it was.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from numba import get_num_threads

from edgeslim.runtime import kernels as K
from edgeslim.runtime.backends import numba_backend  # noqa: F401  (sets the runtime's OpenMP wait policy)
from edgeslim.runtime.kernels import driver
from edgeslim.runtime.threads import PARALLEL, SERIAL, Fixed

SIZES = ((256, 256), (512, 256), (768, 256), (256, 768), (1024, 256), (512, 512), (1024, 512), (2048, 256),
         (1024, 1024), (2048, 1024), (2048, 2048), (5632, 2048))


def _weight(qtype: str, rows: int, cols: int, rng) -> K.Packed:
    from edgeslim import quants as Q

    w = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
    return K.prepare(qtype, Q.quantize(w, qtype).data, (rows, cols))


def _time(p: K.Packed, x: np.ndarray, parallel: bool, calls: int) -> float:
    driver.CHOOSER = Fixed(PARALLEL if parallel else SERIAL)
    t0 = time.perf_counter()
    for _ in range(calls):
        K.linear(p, x)
    return (time.perf_counter() - t0) / calls


def probe(qtype: str, T: int, repeats: int, rng) -> None:
    print(f"\n{qtype}, T={T}, {get_num_threads()} threads: median us per call over {repeats} alternating repeats")
    print(f"{'rows x cols':>12} {'work':>10} {'serial':>9} {'parallel':>9} {'ser/par':>8}   best of: "
          f"{'serial':>7} {'parallel':>8} {'ser/par':>7}")
    first = None  # [by median, by best of repeats]
    for rows, cols in SIZES:
        p = _weight(qtype, rows, cols, rng)
        x = rng.standard_normal((T, cols)).astype(np.float32)
        calls = max(3, int(2e6 // (rows * cols)))
        _time(p, x, True, 2), _time(p, x, False, 2)  # compile both
        ser, par = [], []
        for _ in range(repeats):
            ser.append(_time(p, x, False, calls))
            par.append(_time(p, x, True, calls))
        s, q = np.median(ser) * 1e6, np.median(par) * 1e6
        s0, q0 = min(ser) * 1e6, min(par) * 1e6
        work = rows * p.colsp * T
        first = (first or [None, None])
        for i, (a, b) in enumerate(((s, q), (s0, q0))):
            first[i] = work if first[i] is None and b < a else first[i]
        print(f"{rows:>5} x {cols:<5} {work:>10} {s:9.1f} {q:9.1f} {s / q:8.2f}   best of: {s0:7.1f} {q0:8.1f} "
              f"{s0 / q0:7.2f}")
    print(f"smallest work where parallel won: median {first[0]}, best of repeats {first[1]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--types", nargs="+", default=["Q8_0", "Q4_K"])
    ap.add_argument("--T", nargs="+", type=int, default=[1])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    saved = driver.CHOOSER
    rng = np.random.default_rng(0)
    try:
        for qtype in args.types:
            for T in args.T:
                probe(qtype, T, args.repeats, rng)
    finally:
        driver.CHOOSER = saved


if __name__ == "__main__":
    main()
