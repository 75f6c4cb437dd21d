"""Flags shared by `edgeslim generate`, `chat` and `eval`, and turning them into a Model."""
from __future__ import annotations

import argparse
import sys
import warnings

from .sampling import SamplingParams

BACKEND_CHOICES = ("auto", "numba", "mlx", "numpy")


def add_model_args(p: argparse.ArgumentParser, ctx_default: int | None = None) -> None:
    """FILE, --backend, --ctx, --kv-dtype, --batch."""
    p.add_argument("model", metavar="FILE", help="GGUF model file")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="auto: MLX on Apple silicon when installed, else numba; numpy is the slow reference")
    ctx_help = "context length (KV cache size)" + (f"; default {ctx_default}" if ctx_default else
                                                   "; default min(model context, 4096)")
    p.add_argument("-c", "--ctx", type=int, default=ctx_default, metavar="N", help=ctx_help)
    p.add_argument("--kv-dtype", default="float16", choices=("float16", "float32"),
                   help="KV cache precision (default float16, as llama.cpp)")
    p.add_argument("--batch", type=int, default=512, metavar="N", help="prompt tokens per batched forward")


def add_sampling_args(p: argparse.ArgumentParser, max_default: int) -> None:
    """-n, --temp, --top-k, --top-p, --min-p, --repeat-penalty, --repeat-last-n, --seed, --stop."""
    d = SamplingParams()
    p.add_argument("-n", "--n-predict", type=int, default=max_default, metavar="N",
                   help=f"tokens to generate at most (default {max_default})")
    p.add_argument("--temp", type=float, default=d.temperature,
                   help=f"temperature; 0 = greedy (default {d.temperature}, as llama.cpp)")
    p.add_argument("--top-k", type=int, default=d.top_k, help=f"0 = off (default {d.top_k})")
    p.add_argument("--top-p", type=float, default=d.top_p, help=f"1.0 = off (default {d.top_p})")
    p.add_argument("--min-p", type=float, default=d.min_p, help=f"0.0 = off (default {d.min_p})")
    p.add_argument("--repeat-penalty", type=float, default=d.repeat_penalty, help="1.0 = off (default)")
    p.add_argument("--repeat-last-n", type=int, default=d.repeat_last_n,
                   help=f"tokens the repeat penalty looks back over (default {d.repeat_last_n})")
    p.add_argument("-s", "--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when TEXT is generated (repeatable)")


def sampling_kwargs(args) -> dict:
    """Keyword arguments for Model.generate / stream / chat from parsed flags."""
    return dict(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n, seed=args.seed,
                stop=args.stop or None)


def load_model(args):
    """Model from parsed flags; library warnings become one-line notes on stderr."""
    from .api import load

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load(args.model, backend=args.backend, n_ctx=args.ctx, kv_dtype=args.kv_dtype, n_batch=args.batch,
                     cache_slots=getattr(args, "cache_slots", 1))
    for w in caught:
        note(f"edgeslim: note: {w.message}")
    return model


def note(text: str) -> None:
    """A line for the user on stderr (never mixed into generated text on stdout)."""
    print(text, file=sys.stderr, flush=True)
