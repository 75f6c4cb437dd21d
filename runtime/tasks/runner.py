"""Build the task items once, score them by logits, and report accuracy with Wilson intervals.

    from edgeslim.runtime.tasks import run_tasks, format_results
    results = run_tasks(model, ["next", "copy", "recall", "cloze"], text_path=None, n=200, seed=0)
    print(format_results(results))

Items depend only on the tokenizer, the corpus, n, the seed and the context length, so
the F16 file and every compressed file of one model are scored on identical probes.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import numpy as np

from ...errors import InputError
from . import cloze, copying, next_token, recall
from .common import Item, TaskResult, Tok, read_corpus

TASKS = OrderedDict([("next", next_token), ("copy", copying), ("recall", recall), ("cloze", cloze)])
EASY = ("next-frequent", "copy")  # the rows a small model does well (docs/benchmarks.md)
MAX_LEN = 256  # longest item, in tokens (capped at the model's context)
VERSION = 1  # bump when the items a task builds change (cached sweep results name it)


def resolve(names: str | Sequence[str]) -> list[str]:
    """Task names from "all", "next,copy" or a list; InputError naming the choices for an unknown one."""
    if isinstance(names, str):
        names = [s.strip() for s in names.split(",") if s.strip()]
    if not names or list(names) == ["all"]:
        return list(TASKS)
    bad = [s for s in names if s not in TASKS]
    if bad:
        raise InputError(f"unknown task {bad[0]!r}; choose from {', '.join(TASKS)} or all")
    return list(dict.fromkeys(names))


def build_items(tokenizer, names: Sequence[str], text: str, n: int, seed: int, max_len: int) -> list[Item]:
    """Every item of the named tasks (n probes per result row at most), deterministic in its inputs."""
    if n < 1:
        raise InputError(f"--task-n {n} must be at least 1")
    tok = Tok(tokenizer)
    return [item for name in resolve(names) for item in TASKS[name].build(tok, text, n, seed, max_len)]


def score(logits_fn: Callable[[list[int]], np.ndarray], items: Sequence[Item], names: Sequence[str],
          n_vocab: int, on_item: Callable[[int, int], None] | None = None) -> list[TaskResult]:
    """Score items with logits_fn(ids) -> (T, V) logits; one TaskResult per row of the named tasks.

    Only the first n_vocab logits count (an embedding can have padding rows past the vocabulary).
    A probe with choices also counts in its "/choice" row, scored among those tokens only.
    """
    counts: dict[str, list] = {}  # row -> [n, correct, sum of 1/k, outcomes]
    for i, item in enumerate(items):
        logits = logits_fn(item.ids)  # (T, V)
        for p in item.probes:
            row = logits[p.pos, :n_vocab]  # (V,)
            _add(counts, p.group, int(np.argmax(row)) == p.target, 0.0)
            if p.choices:
                pick = p.choices[int(np.argmax(row[list(p.choices)]))]
                _add(counts, p.group + "/choice", pick == p.target, 1.0 / len(p.choices))
        if on_item:
            on_item(i, len(items))
    out = []
    for name in resolve(names):
        mod = TASKS[name]
        for row in mod.NAMES:
            n, k, inv, seen = counts.get(row, (0, 0, 0.0, []))
            out.append(TaskResult(row, n, k, inv / n if n and inv else None, mod.ABOUT.get(row, ""), "".join(seen)))
    return out


def _add(counts: dict, row: str, correct: bool, inv_k: float) -> None:
    c = counts.setdefault(row, [0, 0, 0.0, []])
    c[0] += 1
    c[1] += int(correct)
    c[2] += inv_k
    c[3].append("1" if correct else "0")


def run_tasks(model, names: str | Sequence[str] = "all", text_path=None, n: int = 200, seed: int = 0,
              max_len: int = MAX_LEN, on_item: Callable[[int, int], None] | None = None) -> list[TaskResult]:
    """Build the items from the corpus at text_path (None: the built-in stories) and score `model` on them.

    model: an `edgeslim.Model`. n: probes per result row at most. max_len: longest item in tokens
    (capped at the model's context). Returns one TaskResult per row, in task order.
    """
    names = resolve(names)
    max_len = min(max_len, model.n_ctx, model.hparams.context_length)
    items = build_items(model.tokenizer, names, read_corpus(text_path), n, seed, max_len)
    if not items:
        raise InputError("the task text gave no task items; give a longer text with --task-text")
    return score(model.logits, items, names, model.tokenizer.vocab_size, on_item)


def format_results(results: Sequence[TaskResult]) -> str:
    """A plain-text table: row, n, accuracy with its 95% interval, chance."""
    lines = [f"{'task':<15} {'n':>5}  {'accuracy':>8}  {'95% interval':>15}  chance"]
    for r in results:
        lo, hi = r.interval
        chance = f"{r.chance:.3f}" if r.chance is not None else "-"
        lines.append(f"{r.name:<15} {r.n:>5}  {r.accuracy:>8.3f}  [{lo:.3f}, {hi:.3f}]  {chance}")
    return "\n".join(lines)
