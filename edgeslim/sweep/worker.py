"""The sweep's child processes, one job each, printing one JSON object as the last stdout line.

    python -m edgeslim.sweep.worker convert '{"src": ..., "out": ..., "kwargs": {...}}'
    python -m edgeslim.sweep.worker speed FILE --backend auto --prompt-tokens 32 --tokens 64

Each runs in its own process so that its peak memory is its own: `peak_rss_bytes` is
VmHWM from /proc/self/status (the high-water mark of this exec's address space; Linux),
else ru_maxrss of this process. (A child's ru_maxrss as its parent sees it through wait4
would include the parent's resident size when the child was started with vfork.)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time


def peak_rss_bytes() -> int:
    """VmHWM of this process in bytes (Linux), else ru_maxrss (KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def do_convert(spec: dict) -> dict:
    """convert(src, out, **kwargs) with a quiet converter; the report's allocation and the time."""
    from edgeslim.convert.pipeline import convert

    t0 = time.perf_counter()
    report = convert(spec["src"], spec["out"], force=True, progress=False, **spec["kwargs"]) or {}
    alloc = report.get("allocation") or {}
    return {"convert_s": round(time.perf_counter() - t0, 2), "allocation_bpw": alloc.get("bpw"),
            "convert_peak_rss_bytes": peak_rss_bytes()}


def do_speed(args) -> dict:
    """Load, prefill a prompt, then time a greedy decode of --tokens tokens (after a short warm-up),
    --repeats times, reporting the fastest prefill and decode."""
    import numpy as np

    t0 = time.perf_counter()
    import edgeslim
    from edgeslim.runtime.generate import Session
    from edgeslim.runtime.tasks.common import read_corpus

    model = edgeslim.load(args.file, backend=args.backend, n_ctx=args.prompt_tokens + args.tokens + 16)
    load_s = time.perf_counter() - t0
    ids = model.tokenize(read_corpus(args.text))[:args.prompt_tokens]
    session = Session(model._backend, model.n_ctx)

    def run(n: int) -> tuple[float, float]:
        session.reset()
        t = time.perf_counter()
        tok = int(np.argmax(session.feed(ids)[-1]))
        t_prompt = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(n):
            tok = int(np.argmax(session.feed([tok])[-1]))
        return t_prompt, time.perf_counter() - t

    run(min(4, args.tokens))  # warm-up: compiles kernels, pages the weights in
    times = [run(args.tokens) for _ in range(args.repeats)]  # best of the repeats: least disturbed by others
    t_prompt, t_decode = min(t[0] for t in times), min(t[1] for t in times)
    return {"backend": model.backend, "load_s": round(load_s, 3), "prompt_tps": len(ids) / t_prompt,
            "decode_tps": args.tokens / t_decode, "decode_tokens": args.tokens, "repeats": args.repeats,
            "peak_rss_bytes": peak_rss_bytes()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgeslim.sweep.worker")
    sub = p.add_subparsers(dest="job", required=True)
    c = sub.add_parser("convert")
    c.add_argument("spec", help="JSON: src, out, kwargs")
    s = sub.add_parser("speed")
    s.add_argument("file")
    s.add_argument("--backend", default="auto")
    s.add_argument("--text", default=None, help="prompt source (default: the built-in task stories)")
    s.add_argument("--prompt-tokens", type=int, default=32)
    s.add_argument("--tokens", type=int, default=64)
    s.add_argument("--repeats", type=int, default=3, help="timed runs; the fastest is reported")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = do_convert(json.loads(args.spec)) if args.job == "convert" else do_speed(args)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
