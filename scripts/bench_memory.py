"""Peak memory of `edgeslim generate` against the goal and against llama.cpp, per weight type, one run.

    python scripts/bench_memory.py                                  # TinyLlama-1.1B shape, the usual downloads
    python scripts/bench_memory.py --shape small --types Q4_0 IQ4_XS   # smoke test
    python scripts/bench_memory.py --types Q4_K_M Q8_0 --ctx 2048 --json out/mem.json

For each type the script makes (once; cached in ~/.cache/edgeslim/bench/) a
random-weight model file of a real shape with llama.cpp's own tools
(`_bench_models.py`: llama-quantize, an imatrix for the IQ types; without the
tools, edgeslim's writer for the types it writes), then runs

    /usr/bin/time -v edgeslim generate FILE -p PROMPT -n N --temp 0 -c CTX
    /usr/bin/time -v llama-simple -m FILE -n N PROMPT        (the peer, same file)

and reads "Maximum resident set size" of each.  One untimed edgeslim run first
fills numba's disk cache, so the measured run is a normal start (no compiler
in memory).  The goal, per type:

    peak RSS <= 1.1 x file + KV cache (F16, CTX positions) + 300 MB

printed as GOAL MET / BELOW GOAL with the figures.  llama.cpp maps the file
and reads the weights in place; its peak is the floor to compare with (it
sizes its KV cache to prompt + N, so its KV is smaller than edgeslim's).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _bench_models import SHAPES, LlamaTools, base_model, model_file  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeslim" / "bench"
TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS",
         "IQ3_XXS", "IQ3_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0", "F16")
EXTRA = 300_000_000  # bytes allowed above 1.1 x file + KV cache
PROMPT = "Once upon a time, in a small village by the sea, there lived"
EDGESLIM = [sys.executable, "-c", "import sys; from edgeslim.cli import main; sys.exit(main())"]


def timed_peak(cmd: list[str], env: dict | None = None, timeout: int = 1800) -> tuple[int | None, str]:
    """(peak RSS in bytes from /usr/bin/time -v, or None; the command's output tail)."""
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env, timeout=timeout)
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-6:])
    if p.returncode or not m:
        return None, tail
    return int(m.group(1)) * 1024, tail


def kv_bytes(shape: dict, ctx: int) -> int:
    """edgeslim's F16 KV cache: K and V, every layer, ctx positions."""
    head_dim = shape["hidden"] // shape["heads"]
    return 2 * shape["layers"] * ctx * shape["kv_heads"] * head_dim * 2


def measure(path: Path, args, env: dict, tools: LlamaTools | None) -> dict:
    gen = [*EDGESLIM, "generate", str(path), "-p", PROMPT, "-n", str(args.n), "--temp", "0", "-c", str(args.ctx),
           "--no-stats"]
    timed_peak(gen, env)  # warm numba's disk cache (compiles once per type)
    es, es_tail = timed_peak(gen, env)
    row = {"file": str(path), "file_bytes": path.stat().st_size, "edgeslim_peak": es}
    if es is None:
        row["edgeslim_error"] = es_tail
    if tools and (tools.tool("llama-simple")).is_file():
        lc, lc_tail = timed_peak([str(tools.tool("llama-simple")), "-m", str(path), "-n", str(args.n), PROMPT], env)
        row["llamacpp_peak"] = lc
        if lc is None:
            row["llamacpp_error"] = lc_tail
    return row


def report(rows: list[dict], kv: int) -> list[str]:
    mib = 2 ** 20
    print(f"\n{'type':9s} {'file MiB':>9s} {'edgeslim MiB':>12s} {'x file':>7s} {'goal MiB':>9s} "
          f"{'llama.cpp MiB':>13s} {'vs llama.cpp':>12s}")
    goals = []
    for r in rows:
        f, es, lc = r["file_bytes"], r.get("edgeslim_peak"), r.get("llamacpp_peak")
        budget = 1.1 * f + kv + EXTRA
        cell = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
        print(f"{r['type']:9s} {f / mib:9.1f} {cell(es and es / mib, '12.1f')} {cell(es and es / f, '7.2f')} "
              f"{budget / mib:9.1f} {cell(lc and lc / mib, '13.1f')} {cell(es and lc and es / lc, '12.2f')}")
        if es is None:
            goals.append(f"BELOW GOAL  {r['type']}: edgeslim failed: {r.get('edgeslim_error', '')[-300:]}")
        else:
            verdict = "GOAL MET  " if es <= budget else "BELOW GOAL"
            goals.append(f"{verdict}  {r['type']} peak RSS {es / mib:.0f} MiB vs 1.1 x file + KV + 300 MB = "
                         f"{budget / mib:.0f} MiB ({(es - budget) / mib:+.0f} MiB)")
    return goals


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tinyllama")
    ap.add_argument("--types", nargs="+", default=list(TYPES), help="llama-quantize type names (es:TYPE: edgeslim's)")
    ap.add_argument("--ctx", type=int, default=512, help="edgeslim's context (KV cache positions)")
    ap.add_argument("-n", type=int, default=32, help="tokens generated per run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--llama-bin", help="folder of llama.cpp's tools (default: $LLAMA_CPP_BIN, PATH, shared build)")
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    tools = LlamaTools.find(args.llama_bin)
    if tools is None:
        print("llama.cpp tools not found: files by edgeslim's writer, no peer column", flush=True)
    env = dict(os.environ, NUMBA_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads))
    shape = SHAPES[args.shape]
    f16 = base_model(args.cache, args.shape, args.seed)
    kv = kv_bytes(shape, args.ctx)
    print(f"shape {args.shape} {shape}, ctx {args.ctx} (edgeslim F16 KV cache {kv / 2**20:.1f} MiB), "
          f"{args.n} tokens, threads {args.threads}", flush=True)
    rows = []
    for t in args.types:
        path = model_file(args.cache, f16, t, tools, args.threads)
        row = {"type": t, **measure(path, args, env, tools)}
        rows.append(row)
        print(f"  {t}: file {row['file_bytes'] / 2**20:.1f} MiB, edgeslim peak "
              f"{(row['edgeslim_peak'] or 0) / 2**20:.1f} MiB, llama.cpp peak "
              f"{(row.get('llamacpp_peak') or 0) / 2**20:.1f} MiB", flush=True)
    goals = report(rows, kv)
    print()
    for g in goals:
        print(g)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"config": {**vars(args), "json": str(args.json), "cache": str(args.cache),
                                                    "llama_bin": str(tools.bin) if tools else None},
                                         "kv_bytes": kv, "rows": rows, "goals": goals}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
