"""In-context recall of a key-value list ("recall").

Each item states PAIRS facts "K has a V." with keys K drawn from the corpus's names
(capitalized words that occur mid-sentence) and values V from the words that follow
"a" in the corpus, all distinct, then asks one of them again: "... Kq has a" -> the
first token of " Vq". Correct: that token is the arg-max over the vocabulary.
"recall/choice" scores the same probe among the first tokens of the PAIRS values only
(chance 1/PAIRS), which shows recall in models that do not yet put the value first.
"""
from __future__ import annotations

import re

from .common import Item, Probe, Tok, rng_for

NAME = "recall"
NAMES = (NAME, NAME + "/choice")
PAIRS = 4
ABOUT = {NAME: f"a list of {PAIRS} 'K has a V.' facts, then 'K has a' -> V",
         NAME + "/choice": f"the same, scored among the {PAIRS} listed values only"}


def vocab(text: str) -> tuple[list[str], list[str]]:
    """(names, nouns) of the corpus, most frequent first: up to 60 names and 120 nouns."""
    names: dict[str, int] = {}
    for w in re.findall(r"(?<=[a-z,] )([A-Z][a-z]{2,})\b", text):
        names[w] = names.get(w, 0) + 1
    nouns: dict[str, int] = {}
    for w in re.findall(r"\ba ([a-z]{3,})\b", text):
        nouns[w] = nouns.get(w, 0) + 1
    top = lambda d, k: sorted(d, key=lambda w: (-d[w], w))[:k]  # noqa: E731
    keys = top(names, 60)
    return keys, [w for w in top(nouns, 120) if w.capitalize() not in keys]


def build(tok: Tok, text: str, n: int, seed: int, max_len: int) -> list[Item]:
    """n items (fewer when the corpus has too few names or nouns)."""
    rng = rng_for(NAME, seed)
    keys, values = vocab(text)
    if len(keys) < PAIRS or len(values) < PAIRS:
        return []
    start = tok.start()
    items = []
    for _ in range(20 * n):
        if len(items) >= n:
            break
        ks, vs = rng.sample(keys, PAIRS), rng.sample(values, PAIRS)
        q = rng.randrange(PAIRS)
        prompt = " ".join(f"{k} has a {v}." for k, v in zip(ks, vs)) + f" {ks[q]} has a"
        heads = [tok.next_word(prompt, v) for v in vs]
        if any(h is None for h in heads) or len({h[1] for h in heads}) < PAIRS:
            continue  # a value's first token is ambiguous, or two values start alike
        ids = start + heads[q][0]
        if len(ids) > max_len:
            continue
        choices = tuple(h[1] for h in heads)
        items.append(Item(ids, [Probe(NAME, len(ids) - 1, heads[q][1], choices)]))
    return items
