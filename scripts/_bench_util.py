"""Worker side of scripts/bench_vs_llamacpp.py: time one runtime on one GGUF, in its own process.

    python scripts/_bench_util.py --side edgeslim --gguf m.gguf --ids ids.json --spawn-time T
    python scripts/_bench_util.py --side llamacpp --gguf m.gguf --ids ids.json --spawn-time T

The parent runs each side in a separate process so that each peak RSS
(`ru_maxrss`) belongs to one runtime only. Top-level imports are kept to the
standard library and numpy so the worker's memory is the runtime's own.

What one worker does, printing one JSON object as its last stdout line:
  1. start-up: import the runtime, load the file, feed the short decode prompt
     and take the first greedy token; `startup_s` runs from the parent's
     spawn time (so it includes the interpreter start) to that token.  A
     start-up-only run then also runs a short decode and a prefill, so numba's
     disk cache holds every kernel before the timed runs.
  2. warm-up: a short decode and one prefill (not recorded).
  3. `repeats` times: a greedy decode of `n_decode` tokens after the short
     prompt (only the single-token forwards + argmax are timed) and a prefill
     of the long prompt on an empty cache (the batched forward is timed).
Both sides run the same loop shape: forward -> argmax of the last logits row ->
feed that token. Neither side samples, detokenizes or checks stop strings, so
what is timed is the model's forward pass plus one argmax over the vocabulary.

The machine's read bandwidth (`read_bandwidth`) is measured here too, with numpy.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

if "edgeslim" in sys.argv:  # as a user's program does: edgeslim before numpy (see edgeslim/__init__.py)
    import edgeslim  # noqa: F401

import numpy as np  # noqa: E402


def rss_now_mib() -> dict:
    """VmRSS / VmHWM of this process in MiB (Linux /proc); empty elsewhere."""
    out = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key = line.split(":")[0]
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def ru_maxrss_bytes() -> int:
    """ru_maxrss of this process in bytes (KiB on Linux, bytes on macOS).

    On Linux this is not this program's own peak: the kernel carries the
    parent's resident size at fork over exec into the child's maxrss, so a
    worker started from a 500 MiB parent reports at least ~500 MiB.
    """
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def peak_rss_bytes() -> int:
    """Peak resident size of this program: VmHWM (Linux, the high-water mark of
    this exec's address space), else ru_maxrss."""
    hwm = rss_now_mib().get("VmHWM")
    return int(hwm * 1024 * 1024) if hwm is not None else ru_maxrss_bytes()


# -- the two runtimes behind one interface: reset(), feed(ids) -> last logits row ---------------
class EdgeslimSide:
    """edgeslim's numba backend through a generation Session (the loop Model.generate uses)."""

    name = "edgeslim"

    def __init__(self, path: str, n_ctx: int):
        import edgeslim
        from edgeslim.runtime.generate import Session

        self.model = edgeslim.load(path, backend="numba", n_ctx=n_ctx)
        self.session = Session(self.model._backend, n_ctx)  # the model's own backend and KV cache type

    def info(self) -> dict:
        import numba

        return {"numba_threads": numba.get_num_threads(), "threading_layer": _numba_layer(),
                "backend": self.model.backend}

    def reset(self) -> None:
        self.session.reset()

    def feed(self, ids) -> np.ndarray:
        return self.session.feed(ids, n_logits=1)[-1]  # (V,)


def _numba_layer() -> str:
    try:
        import numba

        return str(numba.threading_layer())
    except Exception:  # only known after the first parallel kernel ran
        return "?"


class LlamaCppSide:
    """llama.cpp through llama-cpp-python's low-level eval (no sampler, no detokenizer)."""

    name = "llamacpp"

    def __init__(self, path: str, n_ctx: int, threads: int):
        import llama_cpp

        self.lib = llama_cpp
        self.llm = llama_cpp.Llama(path, n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
                                   n_batch=512, verbose=False)
        self.n_vocab = self.llm.n_vocab()

    def info(self) -> dict:
        return {"llama_cpp_python": self.lib.__version__, "n_threads": self.llm.context_params.n_threads,
                "n_threads_batch": self.llm.context_params.n_threads_batch,
                "type_k": int(self.llm.context_params.type_k)}

    def reset(self) -> None:
        self.llm.reset()  # the next eval removes the cached positions from 0 on

    def feed(self, ids) -> np.ndarray:
        self.llm.eval(list(ids))
        ptr = self.lib.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))


def open_side(side: str, path: str, n_ctx: int, threads: int):
    if side == "edgeslim":
        return EdgeslimSide(path, n_ctx)
    if side == "llamacpp":
        return LlamaCppSide(path, n_ctx, threads)
    raise SystemExit(f"unknown --side {side!r}; use edgeslim or llamacpp")


# -- measurements -------------------------------------------------------------------------------
def decode(rt, prompt, n: int) -> tuple[float, float, list[int]]:
    """Greedy decode of n tokens after prompt; (wall s, process CPU s of the n single-token steps, tokens).

    CPU time above wall x threads means threads spun while waiting, below it that they
    lost their cores to other programs."""
    rt.reset()
    tok = int(np.argmax(rt.feed(prompt)))
    toks = [tok]
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        tok = int(np.argmax(rt.feed([tok])))
        toks.append(tok)
    return time.perf_counter() - t0, time.process_time() - c0, toks


def prefill(rt, prompt) -> tuple[float, float]:
    """(wall s, process CPU s) to run prompt through an empty cache (one batch) and take its argmax."""
    rt.reset()
    t0, c0 = time.perf_counter(), time.process_time()
    int(np.argmax(rt.feed(prompt)))
    return time.perf_counter() - t0, time.process_time() - c0


ENV_KEYS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")


def run_worker(args) -> dict:
    """Start-up, warm-up and timed repeats for one side (see the module docstring)."""
    with open(args.ids) as fh:
        ids = json.load(fh)
    short, long_ = ids["decode_prompt"], ids["prefill_prompt"]
    t_import = time.time()
    rt = open_side(args.side, args.gguf, args.ctx, args.threads)
    t_loaded = time.time()
    rss_loaded = rss_now_mib()
    rt.reset()
    logits = np.array(rt.feed(short), dtype=np.float32)  # (V,)
    first = int(np.argmax(logits))
    t_first = time.time()
    out = {"side": args.side, "gguf": args.gguf, "first_token": first, "first_logits": logits.tolist(),
           "startup_s": t_first - args.spawn_time if args.spawn_time else None,
           "python_start_s": t_import - args.spawn_time if args.spawn_time else None,
           "load_s": t_loaded - t_import, "first_token_after_load_s": t_first - t_loaded,
           "rss_after_load_mib": rss_loaded.get("VmRSS")}
    if args.startup_only:
        out["peak_rss_bytes"] = peak_rss_bytes()
        out["ru_maxrss_bytes"] = ru_maxrss_bytes()
        decode(rt, short, min(8, args.n_decode))  # fill numba's disk cache for every kernel the timed
        prefill(rt, long_)  # rounds use, so their peak RSS holds no compiler
        return out
    decode(rt, short, min(8, args.n_decode))  # warm-up: compiles / pages in everything used below
    prefill(rt, long_)
    dec, dec_cpu, pre, pre_cpu, tokens = [], [], [], [], None
    for _ in range(args.repeats):
        s, c, tokens = decode(rt, short, args.n_decode)
        dec.append(args.n_decode / s)
        dec_cpu.append(c / s)
        s, c = prefill(rt, long_)
        pre.append(len(long_) / s)
        pre_cpu.append(c / s)
    out.update(info=rt.info(), decode_tps=dec, decode_cpu_per_wall=dec_cpu, prefill_tps=pre,
               prefill_cpu_per_wall=pre_cpu, decode_tokens=tokens,
               rss_end_mib=rss_now_mib().get("VmRSS"), peak_rss_bytes=peak_rss_bytes(),
               ru_maxrss_bytes=ru_maxrss_bytes(), loadavg_end=os.getloadavg(),
               env={k: os.environ.get(k) for k in ENV_KEYS})
    return out


def read_bandwidth(mib: int = 1024, reps: int = 3) -> dict:
    """Read bandwidth of this machine as numpy sees it, in GB/s (best of reps).

    one_thread: np.sum over a float32 array of `mib` MiB (numpy reductions are
    single-threaded). two_threads: two Python threads each summing one half;
    numpy releases the GIL inside the reduction, so both halves stream at once.
    The array is written first so every page is resident.
    """
    from concurrent.futures import ThreadPoolExecutor

    a = np.ones(mib * (1 << 20) // 4, dtype=np.float32)
    halves = np.array_split(a, 2)

    def best(fn) -> float:
        t = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
        return a.nbytes / min(t) / 1e9

    one = best(lambda: float(a.sum()))
    with ThreadPoolExecutor(2) as pool:
        two = best(lambda: list(pool.map(lambda h: float(h.sum()), halves)))
    return {"array_mib": mib, "one_thread_gbs": one, "two_threads_gbs": two}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", required=True, choices=("edgeslim", "llamacpp"))
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--ids", required=True, help="JSON file with decode_prompt and prefill_prompt token ids")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-decode", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--spawn-time", type=float, default=0.0, help="parent's time.time() just before the spawn")
    ap.add_argument("--startup-only", action="store_true", help="stop after the first token (cache warm-up)")
    args = ap.parse_args(argv)
    print(json.dumps(run_worker(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
