"""`edgeslim sweep MODEL -o DIR --bits ... --sparsity ... --patterns ... --allocate ...`.

Converts the grid bits x sparsity x pattern x allocation (see `edgeslim.sweep.grid`), measures
every file (bytes; KL and ΔPPL against the F16 conversion; task accuracy; decode tok/s and
peak RSS, each in a child process) and writes DIR/sweep.md, DIR/sweep.json, DIR/quality.png
and DIR/speed.png; llama.cpp's and mlx-lm's files join the same axes when those tools are
installed (--peers). Resumable: a rerun skips the points already measured (see
`edgeslim.sweep.run`); --jobs N converts and scores N points at once.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

from ..errors import InputError
from .grid import ALLOCATIONS, PATTERNS, PRUNE_METHODS, floats, make_grid, words

BACKENDS = ("auto", "numba", "mlx", "numpy")


def add_args(p) -> None:
    p.add_argument("model", metavar="MODEL", help="Hugging Face model folder or F16/F32 GGUF file")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output and cache folder")
    p.add_argument("--bits", default="8,6,4,3,2", help="bits: one type each, or a budget with --allocate "
                   "(default 8,6,4,3,2)")
    p.add_argument("--sparsity", default="0", help="fractions pruned, e.g. 0,0.25,0.5,0.7 (default 0)")
    p.add_argument("--patterns", default="unstructured", help=f"sparsity patterns: {', '.join(PATTERNS)}")
    p.add_argument("--prune", default="wanda", help=f"pruning methods: {', '.join(PRUNE_METHODS)} (default wanda)")
    p.add_argument("--allocate", default="type", help="type (one type per file) and/or budget signals: "
                   + ", ".join(ALLOCATIONS[1:]))
    p.add_argument("--family", choices=("ggml", "affine"), default="ggml")
    p.add_argument("--group", type=int, choices=(32, 64), default=64, help="affine group size (default 64)")
    p.add_argument("--text", help="perplexity/KL text (default: the built-in task stories)")
    p.add_argument("--ctx", type=int, default=256, help="perplexity window (default 256)")
    p.add_argument("--chunks", type=int, default=8, help="perplexity windows (default 8)")
    p.add_argument("--tasks", default="all", help="tasks (all, none, or a comma list of next, copy, recall, cloze)")
    p.add_argument("--task-n", type=int, default=100, help="probes per task row (default 100)")
    p.add_argument("--task-seed", type=int, default=0)
    p.add_argument("--task-text", help="task corpus (default: built-in stories)")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="runtime backend that scores every file")
    p.add_argument("--speed-backend", choices=BACKENDS, help="backend timed for decode speed (default: --backend)")
    p.add_argument("--decode-tokens", type=int, default=64, help="tokens timed per speed run (default 64)")
    p.add_argument("--peers", default="llama.cpp,mlx-lm", help="peer files on the same axes: llama.cpp, mlx-lm, "
                   "none (each only when installed)")
    p.add_argument("--llama-bin", metavar="DIR", help="folder with llama-quantize (default: $EDGESLIM_LLAMA_BIN, "
                   "PATH)")
    p.add_argument("-j", "--jobs", type=int, default=1, help="points converted and scored at once (default 1)")
    p.add_argument("--keep-files", action="store_true", help="keep every GGUF in DIR/files")
    p.add_argument("--fresh", action="store_true", help="ignore cached results")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def setup_from(args):
    from ..runtime.tasks import resolve
    from .measure import Setup

    if args.ctx < 8 or args.chunks < 1 or args.task_n < 1 or args.decode_tokens < 1 or args.jobs < 1:
        raise InputError("--ctx must be >= 8 and --chunks, --task-n, --decode-tokens, --jobs >= 1")
    tasks = "" if args.tasks == "none" else ",".join(resolve(args.tasks))
    return Setup(args.text, args.ctx, args.chunks, tasks, args.task_n, args.task_seed, args.task_text, args.backend,
                 args.decode_tokens, speed_backend=args.speed_backend or "")


def grid_from(args):
    from . import peers

    pts, notes = make_grid(floats(args.bits, "--bits"), floats(args.sparsity, "--sparsity"),
                           words(args.patterns, "--patterns", PATTERNS), words(args.allocate, "--allocate", ALLOCATIONS),
                           words(args.prune, "--prune", PRUNE_METHODS), args.family, args.group)
    names = [] if args.peers == "none" else words(args.peers, "--peers", ("llama.cpp", "mlx-lm"))
    return pts + peers.peer_points(names, [p.bits for p in pts]), notes


def run(args) -> int:
    from .report import markdown
    from .run import Sweep, run_sweep

    setup = setup_from(args)
    points, notes = grid_from(args)
    out = Path(args.out)
    t0 = time.perf_counter()
    sw = Sweep(args.model, out, setup, args.keep_files, args.llama_bin, False if args.no_progress else None)
    results = run_sweep(sw, points, args.jobs, args.fresh)
    meta = meta_for(args, sw, results, notes)
    pngs = charts(results, out, Path(args.model).name)
    write_atomic(out / "sweep.json", json.dumps({"meta": meta, "results": results}, indent=1))
    write_atomic(out / "sweep.md", markdown(results, meta, [p.name for p in pngs]))
    n_ok = sum(r.get("status") == "ok" for r in results)
    print(f"sweep: {n_ok} of {len(results)} points measured in {time.perf_counter() - t0:.0f}s; "
          f"{out / 'sweep.md'}" + "".join(f", {p}" for p in pngs), file=sys.stderr)
    return 0


def charts(results, out: Path, title: str) -> list[Path]:
    """quality.png and speed.png; none (with a note) when matplotlib is missing."""
    try:
        from .charts import quality_png, speed_png
    except ImportError:
        print("edgeslim: note: no charts (pip install matplotlib)", file=sys.stderr)
        return []
    try:
        return [quality_png(results, out / "quality.png", title), speed_png(results, out / "speed.png", title)]
    except ImportError:
        print("edgeslim: note: no charts (pip install matplotlib)", file=sys.stderr)
        return []


def meta_for(args, sw, results, notes) -> dict:
    s = sw.setup
    rows = sorted({k for r in results for k in r.get("tasks", {})}, key=_row_order)
    return {"model": str(args.model), "command": "edgeslim sweep " + " ".join(sys.argv[2:]),
            "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}", "task_rows": rows, "notes": notes,
            "setup_lines": [
                f"perplexity / KL: `{s.text or 'built-in task stories'}`, {s.chunks} windows of {s.ctx} tokens "
                "(llama-perplexity's windows, second half scored); KL(F16 ‖ file) per token, F16 = edgeslim's "
                "F16 conversion", f"tasks: {s.tasks or 'none'}, {s.task_n} probes per row, seed {s.task_seed}, "
                f"corpus `{s.task_text or 'built-in stories'}`",
                f"quality scored by the {s.backend} backend; speed: {s.speed_backend or s.backend} backend, greedy decode of {s.decode_tokens} tokens after a {s.prompt_tokens}-"
                "token prompt, one file at a time in its own process; peak RSS = that process's VmHWM",
                f"source sha256 {sw.source[:16]}…"]}


def _row_order(name: str):
    from ..runtime.tasks import TASKS

    order = [row for mod in TASKS.values() for row in mod.NAMES]
    return order.index(name) if name in order else len(order)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
