"""`edgeslim chat FILE [--system S]`: a terminal chat with the model's own chat template.

Commands: /reset (clear the history), /system TEXT (set the system prompt; empty
clears it), /exit. Ctrl-C while a reply streams stops that reply and keeps the
session; Ctrl-C at the prompt clears the line; Ctrl-D (EOF) exits. When the
conversation would overflow the context, the oldest turns are dropped (the
system prompt is kept). The cached prompt prefix is reused between turns, so
each turn only reads the new messages. Models without a chat template get a
plain "User:/Assistant:" format.
"""
from __future__ import annotations

import sys

from .cli_common import add_model_args, add_sampling_args, load_model, note, sampling_kwargs
from .cli_generate import write_out

HELP = "commands: /reset, /system TEXT, /exit; Ctrl-C stops a reply, Ctrl-D quits"


def add_args(p) -> None:
    add_model_args(p)
    p.add_argument("--system", default=None, metavar="TEXT", help="system prompt")
    add_sampling_args(p, max_default=512)
    p.add_argument("--stats", action="store_true", help="print speed stats after each reply (stderr)")


def fit_history(model, system: str | None, history: list[dict], reserve: int) -> list[dict] | None:
    """Messages to send: drops the oldest turns (in place) until prompt + reserve fits n_ctx.

    Returns None when even the last user message alone does not fit.
    """
    head = [{"role": "system", "content": system}] if system else []
    while True:
        msgs = head + history
        n = len(model.chat_tokens(msgs))
        if n + reserve <= model.n_ctx:
            return msgs
        if len(history) <= 1:
            return msgs if n < model.n_ctx else None
        del history[0]
        while history and history[0]["role"] != "user":  # restart on a user turn
            del history[0]


def _read_line(interactive: bool) -> str | None:
    """One input line; None at EOF. Ctrl-C at the prompt gives an empty line."""
    try:
        return input("> " if interactive else "")
    except EOFError:
        if interactive:
            print()
        return None
    except KeyboardInterrupt:
        print()
        return ""


def run(args) -> int:
    model = load_model(args)
    interactive = sys.stdin.isatty()
    system = args.system
    history: list[dict] = []
    reserve = max(1, min(args.n_predict, model.n_ctx // 2))
    template = "its chat template" if model.chat_template else "a plain User/Assistant format (no template in the file)"
    note(f"edgeslim chat: {model.hparams.arch} model, backend {model.backend}, context {model.n_ctx}, {template}")
    note(HELP)
    while True:
        line = _read_line(interactive)
        if line is None:
            return 0
        cmd = line.strip()
        if not cmd:
            continue
        if cmd in ("/exit", "/quit"):
            return 0
        if cmd == "/reset":
            history.clear()
            model.reset()
            note("(history cleared)")
            continue
        if cmd == "/system" or cmd.startswith("/system "):
            system = cmd[len("/system"):].strip() or None
            note("(system prompt set)" if system else "(system prompt cleared)")
            continue
        if cmd.startswith("/") and " " not in cmd:
            note(f"unknown command {cmd}; {HELP}")
            continue
        history.append({"role": "user", "content": line})
        msgs = fit_history(model, system, history, reserve)
        if msgs is None:
            history.pop()
            note(f"(that message is longer than the context of {model.n_ctx} tokens; shorten it or pass a larger --ctx)")
            continue
        history.append({"role": "assistant", "content": _reply(model, msgs, args)})


def _reply(model, msgs: list[dict], args) -> str:
    """Stream one reply to stdout; Ctrl-C stops it. Returns the text shown."""
    parts: list[str] = []
    try:
        for piece in model.stream_chat(msgs, args.n_predict, **sampling_kwargs(args)):
            write_out(piece)
            parts.append(piece)
    except KeyboardInterrupt:
        note("\n(reply stopped)")
    write_out("\n")
    stats = model.last_stats
    if stats is not None and stats.finish_reason == "context":
        note("(the context is full; older turns will be dropped next time, or use /reset)")
    if args.stats and stats is not None:
        note(stats.summary())
    return "".join(parts).strip()
