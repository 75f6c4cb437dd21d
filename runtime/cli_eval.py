"""`edgeslim eval FILE --text TEXTFILE`: perplexity with llama-perplexity's windows.

Prints `PPL = x +/- err` (llama.cpp's estimate and error) and the speed; with
--json one JSON object instead. The windowing is described in
`edgeslim.runtime.perplexity`; numbers compare with llama-perplexity run at
the same context (default --ctx 512 here, the value llama.cpp's published
perplexities use; pass -c to llama-perplexity or --ctx here to match).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import InputError
from .cli_common import add_model_args, load_model


def add_args(p) -> None:
    add_model_args(p, ctx_default=512)
    p.add_argument("--text", required=True, metavar="TEXTFILE", help="UTF-8 text to score")
    p.add_argument("--chunks", type=int, default=None, metavar="K", help="score only the first K windows")
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


def run(args) -> int:
    text = read_text(args.text)
    if args.ctx is not None and args.ctx < 4:
        raise InputError(f"--ctx {args.ctx} is too small for perplexity; use at least 4 (512 is usual)")
    if args.chunks is not None and args.chunks < 1:
        raise InputError(f"--chunks {args.chunks} must be at least 1")
    model = load_model(args)

    def progress(i, n, ppl):  # llama-perplexity's running line: [1]4.0448,[2]3.6455,...
        if not args.json:
            print(f"[{i + 1}]{ppl:.4f},", end="\n" if i + 1 == n else "", file=sys.stderr, flush=True)

    res = model.perplexity(text, n_chunks=args.chunks, on_chunk=progress)
    if args.json:
        print(json.dumps({"model": str(args.model), "backend": model.backend, **res.as_dict()}))
    else:
        print(f"PPL = {res.ppl:.4f} +/- {res.ppl_error:.5f}  ({res.n_chunks} chunks of {res.n_ctx}, "
              f"{res.n_scored} tokens scored, {res.tokens_per_second:.1f} tok/s)")
    return 0
