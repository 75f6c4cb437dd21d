"""`edgeslim generate FILE -p PROMPT -n N`: stream a continuation to stdout, stats to stderr.

BOS is added when the model file says so; `-p ""` generates from BOS alone.
Special-token texts in the prompt ("<|im_start|>") become their tokens, as in
llama.cpp (--no-special keeps them as text).
Sampling defaults follow llama.cpp (temp 0.8, top-k 40, top-p 0.95, min-p 0.05);
`--temp 0` is greedy. Generation stops at an end-of-generation token, a --stop
text, -n tokens, or when the context (--ctx) is full; the reason is in the stats
line. Ctrl-C stops generating and still prints the stats (exit 130).
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import InputError
from .cli_common import add_model_args, add_sampling_args, load_model, note, sampling_kwargs
from .generate import check_prompt


def add_args(p) -> None:
    add_model_args(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("-p", "--prompt", default="", help='prompt text (default "": start from BOS)')
    src.add_argument("-f", "--file", default=None, metavar="PATH", help="read the prompt from a text file")
    add_sampling_args(p, max_default=128)
    p.add_argument("--no-special", action="store_true",
                   help='tokenize texts like "<|im_start|>" in the prompt as plain text (default: as special tokens, like llama.cpp)')
    p.add_argument("--no-stats", action="store_true", help="do not print speed stats to stderr")


def write_out(text: str) -> None:
    """Write generated text to stdout as UTF-8 whatever the locale, flushed (streaming)."""
    buf = getattr(sys.stdout, "buffer", None)
    if buf is not None:
        sys.stdout.flush()
        buf.write(text.encode("utf-8", errors="replace"))
        buf.flush()
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def read_prompt(args) -> str:
    if args.file is None:
        return args.prompt
    try:
        return Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read prompt file {args.file}: {err.__class__.__name__}; give a UTF-8 text file") from None


def run(args) -> int:
    prompt = read_prompt(args)
    model = load_model(args)
    ids = model.tokenize(prompt, special=not args.no_special)
    check_prompt(len(ids), model.n_ctx, model.hparams.context_length)
    if not args.no_stats:
        note(f"edgeslim: {model.hparams.arch} model, backend {model.backend}, context {model.n_ctx}")
    text_end = "\n"
    code = 0
    try:
        for piece in model.stream(ids, args.n_predict, **sampling_kwargs(args)):
            write_out(piece)
            text_end = piece
    except KeyboardInterrupt:
        code = 130
    if not text_end.endswith("\n"):
        write_out("\n")
    stats = model.last_stats
    if stats is not None:
        if stats.finish_reason == "context":
            note(f"edgeslim: stopped: the context of {model.n_ctx} tokens is full; pass a larger --ctx for longer output")
        if not args.no_stats:
            note(stats.summary())
    return code
