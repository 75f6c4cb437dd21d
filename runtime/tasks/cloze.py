"""Long-range cloze, LAMBADA-style ("cloze"): the last word of a sentence whose answer appeared earlier.

Candidates are words of 3+ letters that end a sentence in the corpus, are not among its
20 most frequent words, and occurred earlier in the text: before the current sentence
and at least MIN_GAP characters back (so the cue is outside the local phrase), at most
MAX_BACK characters back. The prompt runs from a sentence start at or before that earlier
occurrence up to the word (cut to the model's context from the left, sentence by
sentence, while it still holds the earlier occurrence); correct when the first token of
" word" is the arg-max. Candidates are taken in a seeded random order, one probe per
item (independent draws; items may share text when the corpus is small).
"""
from __future__ import annotations

import bisect
import re

from .common import Item, Probe, Tok, frequent_words, rng_for

NAME = "cloze"
NAMES = (NAME,)
MIN_GAP, MAX_BACK = 100, 1000  # characters between the earlier occurrence and the answer
ABOUT = {NAME: f"last word of a sentence that occurred {MIN_GAP}-{MAX_BACK} characters earlier"}
_SENTENCE_END = re.compile(r"[.!?][\"')]*\s+")
_FINAL_WORD = re.compile(r"\b([A-Za-z]{3,})(?=\s?[.!?])")


def sentence_starts(text: str) -> list[int]:
    """Character offsets where sentences start (0 and after each . ! ? plus spaces)."""
    return [0] + [m.end() for m in _SENTENCE_END.finditer(text)]


def earlier(text: str, word: str, lo: int, hi: int) -> int | None:
    """Offset of the last whole-word occurrence of word in text[lo:hi], or None."""
    last = None
    for m in re.finditer(rf"\b{re.escape(word)}\b", text[lo:hi]):
        last = lo + m.start()
    return last


def build(tok: Tok, text: str, n: int, seed: int, max_len: int) -> list[Item]:
    """Up to n cloze items from the text."""
    rng = rng_for(NAME, seed)
    stop = set(frequent_words(text, limit=20))
    starts = sentence_starts(text)
    finals = [m for m in _FINAL_WORD.finditer(text) if m.group(1).lower() not in stop]
    rng.shuffle(finals)
    begin = tok.start()
    items: list[Item] = []
    for m in finals:
        if len(items) >= n:
            break
        word, at = m.group(1), m.start()
        s0 = starts[bisect.bisect_right(starts, at) - 1]  # the answer's sentence
        e = earlier(text, word, max(0, at - MAX_BACK), s0)
        if e is None or at - e < MIN_GAP:
            continue
        item = fit_prompt(tok, text, starts, e, at, word, max_len - len(begin))
        if item is not None:
            ids, target = item
            items.append(Item(begin + ids, [Probe(NAME, len(begin) + len(ids) - 1, target)]))
    return items


def fit_prompt(tok: Tok, text: str, starts: list[int], e: int, at: int, word: str, budget: int):
    """(prompt ids, target) from up to two sentences before the one holding the earlier occurrence e,
    the longest that fits `budget` tokens; None when even the sentence at e does not fit."""
    i = bisect.bisect_right(starts, e) - 1
    for j in range(max(i - 2, 0), i + 1):
        got = tok.next_word(text[starts[j]:at].rstrip(), word)
        if got is not None and 0 < len(got[0]) <= budget:
            return got
    return None
