"""`edgeslim eval FILE [--text TEXTFILE [--kl-base BASE]] [--tasks all]`: perplexity, KL and task accuracy.

--text: perplexity with llama-perplexity's windows; prints `PPL = x +/- err` (llama.cpp's
estimate and error) and the speed. The windowing is described in
`edgeslim.runtime.perplexity`; numbers compare with llama-perplexity run at the same
context (default --ctx 512 here, the value llama.cpp's published perplexities use).
--kl-base BASE: also KL(BASE || FILE) on the same windows and positions, as
`llama-perplexity --kl-divergence` defines it (mean KL, its error, top-token agreement,
PPL of both); the two models run window by window.
--tasks: accuracy on the tasks of `edgeslim.runtime.tasks` (frequent vs rare next token,
copying, in-context recall, long-range cloze) built from --task-text (default: the
built-in stories), with 95% Wilson intervals.
--json prints one JSON object instead of the text lines.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import InputError
from .cli_common import add_model_args, load_model


def add_args(p) -> None:
    add_model_args(p, ctx_default=512)
    p.add_argument("--text", metavar="TEXTFILE", help="UTF-8 text to score (perplexity, and KL with --kl-base)")
    p.add_argument("--chunks", type=int, default=None, metavar="K", help="score only the first K windows")
    p.add_argument("--kl-base", metavar="BASE", help="GGUF file to measure KL divergence against (e.g. the F16 "
                   "file), as llama-perplexity --kl-divergence; needs --text")
    p.add_argument("--tasks", metavar="LIST", help="task accuracy: all, or a comma list of next, copy, recall, cloze")
    p.add_argument("--task-text", metavar="TEXTFILE", help="corpus the tasks are built from (default: built-in "
                   "stories)")
    p.add_argument("--task-n", type=int, default=200, metavar="N", help="probes per task row (default 200)")
    p.add_argument("--task-seed", type=int, default=0, metavar="S", help="seed of the task items (default 0)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def read_text(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"text file {path} does not exist; check the path")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"text file {path} is not UTF-8; convert it to UTF-8 text") from None
    if not text.strip():
        raise InputError(f"text file {path} is empty; give a file with text to score")
    return text


def check_args(args) -> None:
    """One-line errors for flag combinations that cannot run."""
    if args.text is None and args.tasks is None:
        raise InputError("nothing to evaluate; give --text FILE (perplexity) and/or --tasks all")
    if args.kl_base and args.text is None:
        raise InputError("--kl-base needs --text FILE (the text whose windows are compared)")
    if args.ctx is not None and args.ctx < 4:
        raise InputError(f"--ctx {args.ctx} is too small for perplexity; use at least 4 (512 is usual)")
    if args.chunks is not None and args.chunks < 1:
        raise InputError(f"--chunks {args.chunks} must be at least 1")
    if args.task_n < 1:
        raise InputError(f"--task-n {args.task_n} must be at least 1")
    if args.tasks is not None:
        from .tasks import resolve

        resolve(args.tasks)


def run(args) -> int:
    check_args(args)
    text = read_text(args.text) if args.text else None
    model = load_model(args)
    out = {"model": str(args.model), "backend": model.backend}
    if text is not None:
        res = model.perplexity(text, n_chunks=args.chunks, on_chunk=None if args.json else _ppl_progress)
        out.update(res.as_dict())
        if not args.json:
            print(f"PPL = {res.ppl:.4f} +/- {res.ppl_error:.5f}  ({res.n_chunks} chunks of {res.n_ctx}, "
                  f"{res.n_scored} tokens scored, {res.tokens_per_second:.1f} tok/s)")
    if args.kl_base:
        out["kl"] = kl_against(args, model, text)
    if args.tasks is not None:
        out["tasks"] = tasks(args, model)
    if args.json:
        print(json.dumps(out))
    return 0


def _ppl_progress(i, n, ppl):  # llama-perplexity's running line: [1]4.0448,[2]3.6455,...
    print(f"[{i + 1}]{ppl:.4f},", end="\n" if i + 1 == n else "", file=sys.stderr, flush=True)


def kl_against(args, model, text: str) -> dict:
    """KL(base || model) on the text's windows; prints llama-perplexity-style lines unless --json."""
    base_args = type(args)(**{**vars(args), "model": args.kl_base})
    base = load_model(base_args)
    res = model.kl_divergence(base, text, n_chunks=args.chunks)
    base.close()
    if not args.json:
        print(f"Mean    KLD: {res.kl_mean:.6f} +/- {res.kl_error:.6f}  (median {res.kl_median:.6f}, "
              f"99% {res.kl_p99:.6f}, max {res.kl_max:.6f})")
        print(f"Same top p: {100 * res.top1_same:.3f} +/- {100 * res.top1_error:.3f} %  "
              f"PPL {res.ppl:.4f} vs base {res.ppl_base:.4f} ({res.dppl:+.4f}; {res.n_scored} tokens)")
    return {"base": str(args.kl_base), **res.as_dict()}


def tasks(args, model) -> list[dict]:
    """Task accuracy rows; prints a table unless --json."""
    from .tasks import format_results, run_tasks

    def progress(i, n):
        if not args.json and ((i + 1) % 25 == 0 or i + 1 == n):
            print(f"\rtasks: {i + 1}/{n} items", end="\n" if i + 1 == n else "", file=sys.stderr, flush=True)

    results = run_tasks(model, args.tasks, args.task_text, n=args.task_n, seed=args.task_seed, on_item=progress)
    if not args.json:
        print(format_results(results))
    return [r.as_dict() for r in results]
