"""Speed and memory of edgeslim's numba runtime against llama.cpp, on the same llama.cpp-made GGUF, in one run.

    python scripts/bench_vs_llamacpp.py                          # TinyLlama-1.1B shape, the usual types
    python scripts/bench_vs_llamacpp.py --types Q4_K_M IQ4_XS --rounds 3 --json out/bench.json
    python scripts/bench_vs_llamacpp.py --shape small --types Q4_0 --rounds 1 --repeats 1   # smoke test

What it does:
  1. Makes (once; cached in ~/.cache/edgeslim/bench/) a random-weight model of a real
     shape (--shape: tinyllama = TinyLlama-1.1B: hidden 2048, 22 layers, 32 heads, 4 KV
     heads, FFN 5632, Llama-2's 32000-token vocabulary) as an F16 GGUF, then one file per
     --types entry with llama.cpp's own llama-quantize (IQ types with an importance matrix
     from llama-imatrix over WikiText-2), exactly the files people download; see
     `_bench_models.py`.  "es:TYPE" entries are written by edgeslim's quantizers instead.
  2. For each file, runs each runtime in its own process (so each peak RSS is its
     own): edgeslim (backend "numba", NUMBA_NUM_THREADS=threads) and llama.cpp
     through llama-cpp-python (n_threads = n_threads_batch = threads). Same prompt
     ids, same token counts, same loop (forward, argmax, feed back), same n_ctx,
     F16 KV cache on both. One untimed start-up-only run per side first warms the
     numba cache and the page cache; then --rounds rounds, the side that goes first
     alternating, each with a warm-up and --repeats timed repeats. Medians over all
     repeats are reported. Details: scripts/_bench_util.py.
  3. Decode bandwidth = bytes read per token (every tensor of the file but
     token_embd, of which one row is read) x decode tok/s, against numpy's read
     bandwidth over a 1 GiB float32 array measured in the same run (one thread,
     and two Python threads summing one half each): the share of the memory
     bandwidth each type reaches.
  4. Prints the table and, with --json OUT, writes every number (per repeat too).
  5. Prints GOAL MET / BELOW GOAL per goal: decode >= 1.0x llama.cpp (>= 1.2x for
     Q4_K_M, Q4_0, Q8_0, IQ4_XS; below 0.5x is "not done"), prefill (--n-prefill tokens,
     512 by default) >= 1.0x, peak RSS within 1.1 x file + KV cache + 300 MB.
     The exit status is 0 either way.

The CPU may be shared with other jobs: the load average is printed before and after,
and a busy machine is flagged (a ratio >= goal then reads UNVERIFIED, not GOAL MET).
With several threads, a runtime whose threads meet at many barriers per token
(llama.cpp: one per graph node) loses far more to other programs than on an idle
machine; `--threads 1` removes the barriers and is the fairer comparison on a busy
machine. "tokens per CPU-second" (printed, and in the JSON) is the other such figure.

llama.cpp is optional: without llama-cpp-python only edgeslim's numbers are
printed, and without llama.cpp's tools (--llama-bin) only es:TYPE files can be made.
To install llama-cpp-python the way this project's peers were measured (its PyPI
package is a source distribution that vendors llama.cpp; ~12 min on 2 cores):
    pip download --no-deps --no-binary :all: -d /tmp/sdist llama-cpp-python==0.3.36
    tar xzf /tmp/sdist/llama_cpp_python-0.3.36.tar.gz -C /tmp
    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DGGML_BLAS=OFF -DLLAVA_BUILD=OFF" \\
      CMAKE_BUILD_PARALLEL_LEVEL=2 pip install /tmp/llama_cpp_python-0.3.36
(GGML_NATIVE=ON builds for this CPU's instruction set, as a local llama.cpp build would.)
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / "_bench_util.py"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeslim" / "bench"
BASE_ENV = dict(os.environ)  # before any import can change it (the numba backend sets OMP_WAIT_POLICY)
BUDGET_EXTRA = 300_000_000  # bytes allowed above 1.1 x file + KV cache (the issue's "300 MB")
INSTALL_HINT = ("llama-cpp-python is not installed, so only edgeslim's numbers are shown. Install it from PyPI "
                "(a source build, ~12 min on 2 cores; see this script's docstring): CMAKE_ARGS=\"-DGGML_NATIVE=ON "
                "-DLLAMA_CURL=OFF -DGGML_BLAS=OFF -DLLAVA_BUILD=OFF\" pip install llama-cpp-python==0.3.36")
TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS",
         "IQ3_XXS", "IQ3_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0")
DECODE_GOAL = {"Q4_K_M": 1.2, "Q4_0": 1.2, "Q8_0": 1.2, "IQ4_XS": 1.2}  # others: 1.0
PREFILL_GOAL = 1.0

sys.path.insert(0, str(HERE))
from _bench_models import SHAPES, LlamaTools, base_model, model_file  # noqa: E402


def file_facts(path: Path, shape: dict, n_ctx: int) -> dict:
    """File size, bytes a decode step reads (all tensors but token_embd) and the F16 KV cache size."""
    from edgeslim.gguf_file import GGUFFile
    from edgeslim.tables import TensorNames

    f = GGUFFile(path)
    sizes = {name: t.nbytes for name, t in f.tensors.items()}
    head_dim = shape["hidden"] // shape["heads"]
    kv = 2 * shape["layers"] * n_ctx * shape["kv_heads"] * head_dim * 2  # K and V, float16
    n_vocab = f.tensors[TensorNames.TOKEN_EMBD].shape[0]
    return {"file_bytes": path.stat().st_size, "tensor_bytes": sum(sizes.values()),
            "decode_read_bytes": sum(v for k, v in sizes.items() if k != TensorNames.TOKEN_EMBD),
            "kv_bytes": kv, "n_ctx": n_ctx, "n_vocab": n_vocab,
            "n_params": sum(t.n_elements for t in f.tensors.values())}


# -- running the workers ---------------------------------------------------------------------------
def worker_env(side: str, args) -> dict:
    """The caller's environment with every thread pool of edgeslim (numba, numpy's BLAS) capped
    at --threads (BLAS: --blas-threads when given); llama.cpp's OpenMP wait policy only
    with --llamacpp-passive."""
    env = dict(BASE_ENV)
    env["NUMBA_NUM_THREADS"] = str(args.threads)
    env["OPENBLAS_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.blas_threads or args.threads)
    if side == "llamacpp" and args.llamacpp_passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def run_worker(side: str, gguf: Path, ids_file: Path, args, startup_only: bool = False) -> dict:
    """One worker process; its JSON result, or {"error": ...} with the tail of its stderr."""
    cmd = [sys.executable, str(WORKER), "--side", side, "--gguf", str(gguf), "--ids", str(ids_file),
           "--ctx", str(args.ctx), "--threads", str(args.threads), "--n-decode", str(args.n_decode),
           "--repeats", str(args.repeats)]
    if startup_only:
        cmd.append("--startup-only")
    t = time.time()
    try:
        p = subprocess.run(cmd + ["--spawn-time", repr(t)], capture_output=True, text=True,
                           env=worker_env(side, args), timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"side": side, "error": f"timed out after {args.timeout} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-15:])
        return {"side": side, "error": f"exit {p.returncode}:\n{tail}"}
    res = json.loads(lines[-1])
    warns = [ln for ln in p.stderr.splitlines() if "warn" in ln.lower()]
    if warns:
        res["warnings"] = warns[:5]
    return res


def prompt_ids(vocab: int, n_prefill: int, n_short: int, seed: int) -> dict:
    """The same token ids for both sides: BOS then seeded random ordinary tokens (ids 3..vocab-1)."""
    rng = np.random.default_rng(seed + 1)
    body = rng.integers(3, vocab, n_prefill - 1).tolist()
    return {"prefill_prompt": [1] + body, "decode_prompt": [1] + body[:n_short - 1]}


def bench_type(qtype: str, gguf: Path, ids_file: Path, sides: list[str], args) -> dict:
    """Warm-up starts, then alternating rounds; every worker result kept."""
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    warm: dict[str, dict] = {}
    for s in sides:
        warm[s] = run_worker(s, gguf, ids_file, args, startup_only=True)
        print(f"  {qtype} {s:9s} warm-up start: {_fmt_s(warm[s].get('startup_s'))}"
              + (f"  ERROR {warm[s]['error']}" if "error" in warm[s] else ""), flush=True)
    for r in range(args.rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        for s in order:
            res = run_worker(s, gguf, ids_file, args)
            res.pop("first_logits", None)
            runs[s].append(res)
            if "error" in res:
                print(f"  {qtype} {s:9s} round {r + 1}: ERROR {res['error']}", flush=True)
            else:
                print(f"  {qtype} {s:9s} round {r + 1}: decode {_med(res['decode_tps']):7.2f} tok/s  "
                      f"prefill {_med(res['prefill_tps']):7.1f} tok/s  peak RSS {res['peak_rss_bytes'] / 2**20:6.1f} "
                      f"MiB  start {res['startup_s']:.2f} s  load {os.getloadavg()[0]:.2f}", flush=True)
    return {"warmup": warm, "runs": runs}


def summarize(side_runs: list[dict]) -> dict | None:
    ok = [r for r in side_runs if "error" not in r]
    if not ok:
        return None
    dec = [v for r in ok for v in r["decode_tps"]]
    pre = [v for r in ok for v in r["prefill_tps"]]
    return {"decode_tps": statistics.median(dec), "decode_tps_all": dec,
            "prefill_tps": statistics.median(pre), "prefill_tps_all": pre,
            "startup_s": statistics.median(r["startup_s"] for r in ok),
            "load_s": statistics.median(r["load_s"] for r in ok),
            "decode_cpu_per_wall": statistics.median(v for r in ok for v in r["decode_cpu_per_wall"]),
            "prefill_cpu_per_wall": statistics.median(v for r in ok for v in r["prefill_cpu_per_wall"]),
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in ok),
            "ru_maxrss_bytes": max(r["ru_maxrss_bytes"] for r in ok),
            "rss_after_load_mib": max(r["rss_after_load_mib"] or 0 for r in ok),
            "decode_tokens": ok[-1]["decode_tokens"], "info": ok[-1].get("info"),
            "n_runs": len(ok), "n_errors": len(side_runs) - len(ok)}


# -- report ---------------------------------------------------------------------------------------
def _med(xs) -> float:
    return statistics.median(xs) if xs else float("nan")


def _fmt_s(x) -> str:
    return "-" if x is None else f"{x:.2f} s"


def _ratio(a, b):
    return a / b if a and b else None


def _common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def logits_gap(warm: dict) -> dict | None:
    """How far apart the two sides' logits of the short prompt are (same file, so small);
    pops the raw logits out of the worker results."""
    rows = {s: r.pop("first_logits", None) for s, r in warm.items()}
    for r in warm.values():
        r.pop("first_logits", None)
    a, b = rows.get("edgeslim"), rows.get("llamacpp")
    if a is None or b is None:
        return None
    a, b = np.asarray(a), np.asarray(b)
    return {"max_abs_diff": float(np.abs(a - b).max()), "max_abs_llamacpp": float(np.abs(b).max()),
            "same_argmax": bool(a.argmax() == b.argmax())}


def derive(qtype: str, facts: dict, es: dict | None, lc: dict | None, bw: dict, gap: dict | None) -> dict:
    """Ratios, bandwidths and budget checks of one type."""
    ref = bw["two_threads_gbs"]
    budget = int(1.1 * facts["file_bytes"]) + facts["kv_bytes"] + BUDGET_EXTRA
    row = {"type": qtype, **facts, "rss_budget_bytes": budget, "edgeslim": es, "llamacpp": lc,
           "first_logits_gap": gap}
    for name, s in (("edgeslim", es), ("llamacpp", lc)):
        if s:
            gbs = facts["decode_read_bytes"] * s["decode_tps"] / 1e9
            s.update(decode_gbs=gbs, pct_of_numpy_bw=100 * gbs / ref, within_budget=s["peak_rss_bytes"] <= budget,
                     decode_tok_per_cpu_s=s["decode_tps"] / s["decode_cpu_per_wall"],
                     prefill_tok_per_cpu_s=s["prefill_tps"] / s["prefill_cpu_per_wall"])
    row["decode_ratio"] = _ratio(es and es["decode_tps"], lc and lc["decode_tps"])
    row["prefill_ratio"] = _ratio(es and es["prefill_tps"], lc and lc["prefill_tps"])
    if es and lc:
        row["greedy_tokens_agree"] = _common_prefix(es["decode_tokens"], lc["decode_tokens"])
    return row


def _c(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def print_table(rows: list[dict], bw: dict) -> None:
    head = ("type", "es dec", "lc dec", "ratio", "es pre", "lc pre", "ratio", "GB/s es|lc",
            "%BW es|lc", "peak RSS es|lc MiB", "budget MiB")
    fmt = "{:<9} {:>7} {:>7} {:>6} {:>7} {:>7} {:>6} {:>11} {:>9} {:>18} {:>10}"
    print()
    print("decode/prefill in tok/s (medians); ratio = edgeslim / llama.cpp; GB/s = bytes read per decoded token x "
          f"tok/s; %BW of numpy's 2-thread read ({bw['two_threads_gbs']:.1f} GB/s); budget = 1.1 x file + KV + 300 MB")
    print(fmt.format(*head))
    for r in rows:
        es, lc = r["edgeslim"] or {}, r["llamacpp"] or {}
        print(fmt.format(
            r["type"], _c(es.get("decode_tps"), ".2f"), _c(lc.get("decode_tps"), ".2f"), _c(r["decode_ratio"], ".2f"),
            _c(es.get("prefill_tps"), ".1f"), _c(lc.get("prefill_tps"), ".1f"), _c(r["prefill_ratio"], ".2f"),
            f"{_c(es.get('decode_gbs'), '.2f')}|{_c(lc.get('decode_gbs'), '.2f')}",
            f"{_c(es.get('pct_of_numpy_bw'), '.0f')}|{_c(lc.get('pct_of_numpy_bw'), '.0f')}",
            f"{_c(es.get('peak_rss_bytes') and es['peak_rss_bytes'] / 2**20, '.0f')}|"
            f"{_c(lc.get('peak_rss_bytes') and lc['peak_rss_bytes'] / 2**20, '.0f')}",
            f"{r['rss_budget_bytes'] / 2**20:.0f}"))
    print()
    for r in rows:
        es, lc = r["edgeslim"] or {}, r["llamacpp"] or {}
        print(f"{r['type']}: file {r['file_bytes'] / 2**20:.1f} MiB, read per decoded token "
              f"{r['decode_read_bytes'] / 2**20:.1f} MiB, KV (F16, ctx {r['n_ctx']}) {r['kv_bytes'] / 2**20:.2f} MiB | "
              f"start-up to first token (warm caches, incl. interpreter): edgeslim {_c(es.get('startup_s'), '.2f')} s, "
              f"llama.cpp {_c(lc.get('startup_s'), '.2f')} s | RSS after load: edgeslim "
              f"{_c(es.get('rss_after_load_mib'), '.0f')} MiB, llama.cpp {_c(lc.get('rss_after_load_mib'), '.0f')} MiB"
              f" | CPU/wall decode, prefill: edgeslim {_c(es.get('decode_cpu_per_wall'), '.2f')}, "
              f"{_c(es.get('prefill_cpu_per_wall'), '.2f')}; llama.cpp {_c(lc.get('decode_cpu_per_wall'), '.2f')}, "
              f"{_c(lc.get('prefill_cpu_per_wall'), '.2f')} | tokens per CPU-second decode, prefill: edgeslim "
              f"{_c(es.get('decode_tok_per_cpu_s'), '.1f')}, {_c(es.get('prefill_tok_per_cpu_s'), '.1f')}; llama.cpp "
              f"{_c(lc.get('decode_tok_per_cpu_s'), '.1f')}, {_c(lc.get('prefill_tok_per_cpu_s'), '.1f')}"
              + (f" | greedy tokens identical for the first {r['greedy_tokens_agree']} of "
                 f"{len(es['decode_tokens'])}" if "greedy_tokens_agree" in r else "")
              + (f" | first logits max|diff| {r['first_logits_gap']['max_abs_diff']:.3g} (max|logit| "
                 f"{r['first_logits_gap']['max_abs_llamacpp']:.3g})" if r.get("first_logits_gap") else ""))


def busy_note(load_start, load_end, threads: int) -> str | None:
    """A warning when other programs competed for the CPU (1-min load average; this
    benchmark's own threads account for up to `threads` of it at the end)."""
    cpus = os.cpu_count() or 1
    others = max(load_start[0], load_end[0] - threads)
    if others + threads <= cpus + 0.5:
        return None
    return (f"BUSY MACHINE: other programs kept ~{others:.1f} CPUs busy while {threads} thread(s) were benchmarked "
            f"on {cpus} CPUs; a runtime that synchronises its threads many times per token (llama.cpp) loses most "
            "when a thread is descheduled, so ratios here are not what an idle machine gives")


def _ratio_line(q: str, what: str, ratio, goal: float, busy: str | None) -> str:
    if ratio is None:
        return f"UNKNOWN     {q} {what} vs llama.cpp: llama.cpp not measured"
    if ratio >= goal and busy:
        return (f"UNVERIFIED  {q} {what} {ratio:.2f}x llama.cpp (goal >= {goal:.1f}x), but measured on a busy "
                "machine: not counted as met")
    if ratio >= goal:
        return f"GOAL MET    {q} {what} {ratio:.2f}x llama.cpp (goal >= {goal:.1f}x)"
    line = f"BELOW GOAL  {q} {what} {ratio:.2f}x llama.cpp (goal >= {goal:.1f}x"
    line += "; above the 0.5x floor)" if ratio >= 0.5 else "; under 0.5x: not done)"
    return line + (" [busy machine]" if busy else "")


def goal_lines(rows: list[dict], busy: str | None = None) -> list[str]:
    """GOAL MET / BELOW GOAL per type and goal, stating the measured figure (flagged when the machine was busy)."""
    out = []
    for r in rows:
        es, q = r["edgeslim"], r["type"]
        if es is None:
            out.append(f"BELOW GOAL  {q}: edgeslim produced no numbers (see the errors above)")
            continue
        out.append(_ratio_line(q, "decode", r["decode_ratio"], DECODE_GOAL.get(q.removeprefix("es:"), 1.0), busy))
        out.append(_ratio_line(q, "prefill", r["prefill_ratio"], PREFILL_GOAL, busy))
        peak, budget = es["peak_rss_bytes"], r["rss_budget_bytes"]
        verdict = "GOAL MET  " if peak <= budget else "BELOW GOAL"
        out.append(f"{verdict}  {q} peak RSS {peak / 2**20:.0f} MiB vs 1.1 x file + KV + 300 MB = "
                   f"{budget / 2**20:.0f} MiB ({(peak - budget) / 2**20:+.0f} MiB)")
    return out


# -- main -----------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tinyllama")
    ap.add_argument("--types", nargs="+", default=list(TYPES),
                    help="llama-quantize type names (files made by llama.cpp); es:TYPE = edgeslim's quantizer")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-decode", type=int, default=64, help="tokens generated per decode repeat")
    ap.add_argument("--n-prefill", type=int, default=512, help="prompt tokens per prefill repeat")
    ap.add_argument("--n-short", type=int, default=8, help="prompt tokens before decoding")
    ap.add_argument("--ctx", type=int, default=1024, help="n_ctx of both runtimes (KV cache size)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per worker process")
    ap.add_argument("--rounds", type=int, default=2, help="worker processes per side and type (order alternates)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bw-mib", type=int, default=1024, help="array size of the numpy read-bandwidth test")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds allowed per worker process")
    ap.add_argument("--blas-threads", type=int, help="OPENBLAS_NUM_THREADS / MKL_NUM_THREADS of the workers "
                    "(edgeslim's prefill multiplies with numpy's BLAS; default: --threads)")
    ap.add_argument("--llamacpp-passive", action="store_true", help="give llama.cpp's OpenMP threads "
                    "OMP_WAIT_POLICY=PASSIVE, the policy edgeslim's numba backend sets for itself")
    ap.add_argument("--llama-bin", help="folder of llama.cpp's tools (default: $LLAMA_CPP_BIN, PATH, shared build)")
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--json", type=Path, help="write every number to this file")
    args = ap.parse_args(argv)
    if args.ctx < max(args.n_prefill, args.n_short + args.n_decode + 1):
        ap.error(f"--ctx {args.ctx} is smaller than the prompts and generation need")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from _bench_util import read_bandwidth

    load_start = os.getloadavg()
    print(f"edgeslim vs llama.cpp | {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"threads {args.threads} | load average at start {load_start[0]:.2f} {load_start[1]:.2f} "
          f"{load_start[2]:.2f}", flush=True)
    sides = ["edgeslim"]
    have_lc = importlib.util.find_spec("llama_cpp") is not None
    if have_lc:
        sides.append("llamacpp")
    else:
        print(INSTALL_HINT, flush=True)
    tools = LlamaTools.find(args.llama_bin)
    if tools is None:
        print("llama.cpp's tools not found (--llama-bin): only es:TYPE files can be made", flush=True)

    shape = SHAPES[args.shape]
    f16 = base_model(args.cache, args.shape, args.seed)
    files = {q: model_file(args.cache, f16, q, tools, args.threads) for q in args.types}
    n_vocab = file_facts(f16, shape, args.ctx)["n_vocab"]
    ids = prompt_ids(n_vocab, args.n_prefill, args.n_short, args.seed)
    ids_file = args.cache / f"prompt-ids-{n_vocab}-{args.n_prefill}-{args.n_short}-s{args.seed}.json"
    ids_file.write_text(json.dumps(ids))

    bw = read_bandwidth(args.bw_mib)
    print(f"numpy read bandwidth over {args.bw_mib} MiB float32: 1 thread {bw['one_thread_gbs']:.1f} GB/s, "
          f"2 threads (halves) {bw['two_threads_gbs']:.1f} GB/s", flush=True)

    rows, raw = [], {}
    for q, path in files.items():
        facts = file_facts(path, shape, args.ctx)
        raw[q] = bench_type(q, path, ids_file, sides, args)
        gap = logits_gap(raw[q]["warmup"])
        es = summarize(raw[q]["runs"]["edgeslim"])
        lc = summarize(raw[q]["runs"]["llamacpp"]) if have_lc else None
        rows.append(derive(q, facts, es, lc, bw, gap))

    load_end = os.getloadavg()
    print_table(rows, bw)
    busy = busy_note(load_start, load_end, args.threads)
    print(f"load average (1-min): start {load_start[0]:.2f}, end {load_end[0]:.2f} on {os.cpu_count()} CPUs"
          + (f" -- {busy}" if busy else " (machine quiet enough)"))
    print()
    goals = goal_lines(rows, busy)
    for line in goals:
        print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "config": {**vars(args), "json": str(args.json), "model": shape, "cache": str(args.cache),
                       "llama_bin": str(tools.bin) if tools else None},
            "machine": {"cpus": os.cpu_count(), "processor": platform.processor(), "python": sys.version.split()[0],
                        "loadavg_start": load_start, "loadavg_end": load_end},
            "busy": busy, "numpy_bandwidth": bw, "results": rows, "worker_runs": raw, "goals": goals},
            indent=1, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
