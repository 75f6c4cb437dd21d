"""Copying a random word sequence ("copy"), the induction ability, with its no-copy floor ("copy/first").

Each item is BOS + S + S, where S is the token ids of SPAN words drawn at random (seeded)
from the corpus's frequent words (ranks 20-320, so neither the top function words nor
one-off words). One position k >= 1 of S is chosen at random: "copy" is correct when the
model predicts S[k] in the second repetition, where it can be copied from the first;
"copy/first" scores the same token at the same offset in the first repetition, where
nothing can be copied, so the gap between the two rows is what the model copies.
Each item gives one probe per row, so the probes are independent draws.
"""
from __future__ import annotations

from .common import Item, Probe, Tok, frequent_words, rng_for

NAME = "copy"
NAMES = (NAME, NAME + "/first")
ABOUT = {NAME: "second repetition of a random word sequence: the token is copied",
         NAME + "/first": "the same token at the same offset of the first repetition (no copy possible)"}
SPAN = 12


def build(tok: Tok, text: str, n: int, seed: int, max_len: int) -> list[Item]:
    """n items of BOS + S + S with one probe in each repetition."""
    rng = rng_for(NAME, seed)
    words = frequent_words(text, skip=20, limit=300)
    start = tok.start()
    items = []
    for _ in range(20 * n):
        if len(items) >= n or len(words) < SPAN:
            break
        seq = tok.encode(" ".join(rng.choice(words) for _ in range(SPAN)))
        if len(start) + 2 * len(seq) > max_len or len(seq) < 2:
            continue
        k = rng.randrange(1, len(seq))
        first = len(start) + k - 1  # logits here predict seq[k] in the first copy
        second = first + len(seq)
        items.append(Item(start + seq + seq, [Probe(NAME, second, seq[k]), Probe(NAME + "/first", first, seq[k])]))
    return items
