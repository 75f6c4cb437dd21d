"""Would batched decode across requests be faster than one request at a time? Measure before building it.

Batched decode runs one step of B concurrent requests as one forward with B rows: the
weight matrices are read once for all B tokens instead of B times. What it can gain is
bounded by two numbers measured here on the numba backend:

  matmul   per-token time of kernels.linear on a (rows, cols) weight with x of B rows,
           against B calls with one row (the packed kernels share each weight load across
           up to 4-8 activation rows)
  model    per-token time of one forward of B tokens of one sequence (the batched matmuls,
           attention over a short context) against B single-token forwards, on a GGUF
           (default: the demo model converted to Q8_0). B separate sequences would also
           need B separate attention calls, so this is an upper bound on the gain.
  decoder  what the server does: B greedy generations of --tokens tokens each, through
           runtime/batch.BatchDecoder with max_batch=B (one batched forward per step,
           per-sequence attention, sampling, stop rules) against max_batch=1 (one after
           another); per generated token, prefill included.

    python scripts/probe_batched_decode.py                      # demo model + 2048x2048 / 4096x4096 matrices
    python scripts/probe_batched_decode.py --model m.gguf --batches 1 4 16

Prints one line per case: ms/token one-at-a-time, ms/token batched, and the ratio
(> 1: batching is faster). Timings are the median of --repeats runs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _median_s(fn, repeats: int) -> float:
    fn()  # warm-up (JIT, caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def probe_matmul(qtype: str, rows: int, cols: int, batches, repeats: int) -> list[dict]:
    from edgeslim.quants import quantize
    from edgeslim.runtime import kernels

    rng = np.random.default_rng(0)
    q = quantize(rng.standard_normal((rows, cols), dtype=np.float32) * 0.02, qtype)
    p = kernels.prepare(qtype, np.asarray(q.data).reshape(-1).view(np.uint8), (rows, cols))
    out = []
    for b in batches:
        x = rng.standard_normal((b, cols), dtype=np.float32)
        one = _median_s(lambda: [kernels.linear(p, x[i:i + 1]) for i in range(b)], repeats) / b
        many = _median_s(lambda: kernels.linear(p, x), repeats) / b
        out.append({"case": f"matmul {qtype} {rows}x{cols}", "B": b, "one_ms": one * 1e3, "batched_ms": many * 1e3})
    return out


def probe_model(path: Path, batches, repeats: int) -> list[dict]:
    import edgeslim

    model = edgeslim.load(path, backend="numba")
    be = model._backend
    ids = model.tokenize("Once upon a time there was a little girl who liked to play")[:8]
    out = []
    for b in batches:
        toks = [(7 + 13 * i) % model.hparams.n_vocab for i in range(b)]
        cache = be.new_cache(64)
        be.forward(ids, cache)  # the prompt, not timed: each run rewinds to here

        def one_at_a_time():
            cache.truncate(len(ids))
            for t in toks:
                be.forward([t], cache)

        def batched():
            cache.truncate(len(ids))
            be.forward(toks, cache, n_logits=b)

        one = _median_s(one_at_a_time, repeats) / b
        many = _median_s(batched, repeats) / b
        out.append({"case": f"model {path.name}", "B": b, "one_ms": one * 1e3, "batched_ms": many * 1e3})
    return out


def probe_decoder(path: Path, batches, repeats: int, n_tokens: int) -> list[dict]:
    import edgeslim
    from edgeslim.runtime.batch import BatchDecoder
    from edgeslim.runtime.sampling import SamplingParams

    model = edgeslim.load(path, backend="numba", n_ctx=256)
    greedy = SamplingParams(temperature=0)
    prompts = [model.tokenize(f"Once upon a time there was a {w}") for w in
               ("cat", "dog", "bird", "boy", "girl", "tree", "ball", "car", "boat", "fish", "sun", "moon",
                "king", "frog", "bear", "cake")]
    out = []
    for b in batches:
        def run(max_batch: int) -> None:
            bd = BatchDecoder(model, max_batch)
            todo = [prompts[i % len(prompts)] for i in range(b)]
            while todo or bd.active:
                while todo and len(bd.active) < max_batch:
                    bd.add(todo.pop(), n_tokens, greedy, [], lambda: None)
                bd.step()

        one = _median_s(lambda: run(1), repeats) / (b * n_tokens)
        many = _median_s(lambda: run(b), repeats) / (b * n_tokens)
        out.append({"case": f"decoder {path.name}", "B": b, "one_ms": one * 1e3, "batched_ms": many * 1e3})
    return out


def demo_model(workdir: Path) -> Path:
    import edgeslim
    from edgeslim.demo import DEMO_DIR

    out = workdir / "demo-q8_0.gguf"
    edgeslim.convert(DEMO_DIR, out, quant="Q8_0", progress=False, force=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="GGUF to probe (default: the demo model as Q8_0)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--shapes", nargs="+", default=["2048x2048", "4096x4096"], help="matmul shapes ROWSxCOLS")
    ap.add_argument("--types", nargs="+", default=["Q4_K", "Q8_0"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32, help="tokens per generation in the decoder case")
    args = ap.parse_args(argv)
    rows = []
    for shape in args.shapes:
        r, c = (int(v) for v in shape.split("x"))
        for qtype in args.types:
            rows += probe_matmul(qtype, r, c, args.batches, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or demo_model(Path(tmp))
        rows += probe_model(path, args.batches, args.repeats)
        rows += probe_decoder(path, args.batches, args.repeats, args.tokens)
    print(f"{'case':<28} {'B':>3} {'one at a time ms/tok':>21} {'batched ms/tok':>15} {'ratio':>6}")
    for r in rows:
        print(f"{r['case']:<28} {r['B']:>3} {r['one_ms']:>21.3f} {r['batched_ms']:>15.3f} "
              f"{r['one_ms'] / r['batched_ms']:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
