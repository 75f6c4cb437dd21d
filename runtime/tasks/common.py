"""What every task shares: probes, items, the corpus, tokenizing a word after a prompt, Wilson intervals.

A task turns a text corpus and the model's tokenizer into `Item`s: token ids run through
the model from an empty cache (BOS first when the model adds one), each with `Probe`s
that say which position's logits must rank which token first. Scoring is by logits
only (no sampling): a probe is correct when its target is the arg-max over the whole
vocabulary; with `choices` it is also scored among those tokens alone (chance 1/k).
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import InputError

BUILTIN_TEXT = Path(__file__).with_name("stories.txt")  # see runtime/tasks/README.md
Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class Probe:
    """One scored prediction: the logits at `pos` of its item should rank `target` first.

    group: the result row it counts in (a task name, or a task's reference row such as "copy/first").
    choices: candidate tokens (target included) for the restricted "which of these" accuracy.
    """

    group: str
    pos: int
    target: int
    choices: tuple[int, ...] = ()


@dataclass
class Item:
    """Token ids run through the model from an empty cache, and the probes read from its logits."""

    ids: list[int]
    probes: list[Probe] = field(default_factory=list)


@dataclass
class TaskResult:
    """Accuracy of one result row: `correct` of `n` probes, with a 95% Wilson interval [lo, hi].

    chance: the accuracy of guessing (1/k for a choice among k), None when not defined.
    """

    name: str
    n: int
    correct: int
    chance: float | None = None
    about: str = ""
    outcomes: str = ""  # "1"/"0" per probe in build order: paired comparisons between files on the same probes

    @property
    def accuracy(self) -> float:
        """correct / n (0 when n is 0)."""
        return self.correct / self.n if self.n else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        """95% Wilson score interval of the accuracy."""
        return wilson(self.correct, self.n)

    def as_dict(self) -> dict:
        """name, n, correct, accuracy, lo, hi, chance, about, outcomes."""
        lo, hi = self.interval
        return {"name": self.name, "n": self.n, "correct": self.correct, "accuracy": self.accuracy,
                "lo": lo, "hi": hi, "chance": self.chance, "about": self.about, "outcomes": self.outcomes}


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n Bernoulli trials ((0, 1) when n is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(a: str, b: str, z: float = Z95) -> tuple[float, float, float]:
    """Accuracy of b minus accuracy of a on the same probes (outcome strings of "1"/"0"), with a 95%
    interval from the paired (McNemar) variance: only probes whose outcome differs move it."""
    n = min(len(a), len(b))
    if n == 0:
        return 0.0, 0.0, 0.0
    gain = sum(x == "0" and y == "1" for x, y in zip(a, b))
    loss = sum(x == "1" and y == "0" for x, y in zip(a, b))
    d = (gain - loss) / n
    half = z * math.sqrt(max(gain + loss - n * d * d, 0.0)) / n
    return d, d - half, d + half


def read_corpus(path=None) -> str:
    """The task corpus: a UTF-8 text file, or the built-in stories when path is None."""
    p = BUILTIN_TEXT if path is None else Path(path)
    if not p.is_file():
        raise InputError(f"task text {p} does not exist; check the path (or leave --task-text out)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"task text {p} is not UTF-8; convert it to UTF-8 text") from None
    if len(text.split()) < 200:
        raise InputError(f"task text {p} has fewer than 200 words; give a longer text")
    return text


def documents(text: str) -> list[str]:
    """Paragraph-sized documents: the text cut at blank lines (lines of WikiText headings dropped)."""
    docs = [d.strip() for d in re.split(r"\n\s*\n", text)]
    return [d for d in docs if d and not re.fullmatch(r"=.*=", d)]


class Tok:
    """The model's tokenizer as the tasks use it: plain encoding, BOS, and the first token of a word."""

    def __init__(self, tokenizer):
        self.t = tokenizer
        self.bos = tokenizer.bos_id if tokenizer.add_bos and tokenizer.bos_id is not None else None

    def encode(self, text: str) -> list[int]:
        """Token ids of text, no BOS, special-token texts kept as plain text."""
        return list(self.t.encode(text, add_bos=False, parse_special=False))

    def start(self) -> list[int]:
        """[BOS] when the model adds one, else []."""
        return [] if self.bos is None else [self.bos]

    def next_word(self, prompt: str, word: str) -> tuple[list[int], int] | None:
        """(ids of prompt, first token of " word" after it), or None when appending the word
        re-tokenizes the prompt's end (then no single next token stands for the word)."""
        head = self.encode(prompt)
        full = self.encode(prompt + " " + word)
        if len(full) <= len(head) or full[:len(head)] != head:
            return None
        return head, full[len(head)]


def rng_for(task: str, seed: int) -> random.Random:
    """The task's own deterministic random stream (independent of the other tasks asked)."""
    return random.Random(f"edgeslim-task:{task}:{seed}")


def frequent_words(text: str, skip: int = 0, limit: int = 300) -> list[str]:
    """Lower-case alphabetic words of the text, most frequent first (ties: alphabetical), after `skip`."""
    counts: dict[str, int] = {}
    for w in re.findall(r"[A-Za-z]+", text):
        w = w.lower()
        if len(w) >= 3:
            counts[w] = counts.get(w, 0) + 1
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    return ranked[skip:skip + limit]
