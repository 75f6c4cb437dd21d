"""Decode speed of a model under three thread policies of the numba kernels, interleaved in one process.

    adaptive  the runtime's default: serial below kernels.driver.PARALLEL_MIN_WORK, above it
              whichever copy (serial / parallel) has been cheaper lately (runtime/threads.py)
    parallel  every mat-vec and row dequantization a parallel region (the runtime before it)
    serial    every call serial

Each round runs one greedy generation of --tokens tokens per policy, in a rotating order;
the script prints every policy's median decode tokens/s over --rounds rounds and its
ratio to `parallel`.  Compare on the same machine state only (run all policies together,
as here); with NUMBA_NUM_THREADS=1 all three are the same code.

    NUMBA_NUM_THREADS=2 python scripts/probe_decode_threads.py /tmp/d.gguf
    NUMBA_NUM_THREADS=2 python scripts/probe_decode_threads.py tinyllama-Q4_0.gguf --tokens 16 --rounds 5
"""
from __future__ import annotations

import argparse
import statistics

from numba import get_num_threads

import edgeslim
from edgeslim.runtime.kernels import driver
from edgeslim.runtime.threads import PARALLEL, SERIAL, Fixed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--prompt", default="Once upon a time")
    args = ap.parse_args()
    m = edgeslim.load(args.model, backend="numba")
    policies = {"adaptive": driver.CHOOSER, "parallel": Fixed(PARALLEL), "serial": Fixed(SERIAL)}
    ids = m.tokenize(args.prompt)
    for chooser in policies.values():  # warm-up: compile / load every copy
        driver.CHOOSER = chooser
        m.generate(ids, 4, temperature=0)
    tps = {k: [] for k in policies}
    names = list(policies)
    for r in range(args.rounds):
        for k in names[r % 3:] + names[:r % 3]:
            driver.CHOOSER = policies[k]
            m.generate(ids, args.tokens, temperature=0)
            tps[k].append(m.last_stats.decode_tps)
    driver.CHOOSER = policies["adaptive"]
    base = statistics.median(tps["parallel"])
    print(f"{args.model}: {get_num_threads()} threads, {args.rounds} rounds of {args.tokens} tokens, median decode")
    for k, v in tps.items():
        med = statistics.median(v)
        print(f"  {k:9s} {med:8.1f} tok/s  x{med / base:5.2f}   (all: {', '.join(f'{t:.0f}' for t in v)})")


if __name__ == "__main__":
    main()
