"""Next-token accuracy on frequent vs rare targets ("next-frequent", "next-rare").

Corpus tokens are counted with the model's tokenizer. Sorting the vocabulary by count,
the *frequent* tokens are the most common ones, up to the one that crosses half of all
token occurrences; the *rare* ones lie wholly in the last tenth of the occurrences (the
long tail; tokens that never occur are neither). The corpus is cut into windows of up to 128
tokens (BOS first, as perplexity windows), taken in a seeded random order; every
position in a window's second half (at least 64 tokens of context) whose next token
falls in a bucket is a probe of that bucket, until each bucket has n probes. Probes
from one window are not independent draws, so the Wilson interval is somewhat too
narrow here; the windows are spread over the whole corpus to limit that.
"""
from __future__ import annotations

import numpy as np

from .common import Item, Probe, Tok, rng_for

FREQUENT, RARE = "next-frequent", "next-rare"
NAMES = (FREQUENT, RARE)
ABOUT = {FREQUENT: "next token is one of the corpus's most common tokens (first 50% of occurrences)",
         RARE: "next token is a rare token (last 10% of occurrences)"}
FREQ_MASS, RARE_MASS = 0.5, 0.1
WINDOW = 128


def buckets(ids: np.ndarray, n_vocab: int) -> np.ndarray:
    """Per token id: 1 frequent, 2 rare, 0 neither (by its count in ids)."""
    counts = np.bincount(ids, minlength=n_vocab)[:n_vocab]  # (V,)
    order = np.argsort(-counts, kind="stable")  # most common first
    before = (np.cumsum(counts[order]) - counts[order]) / max(int(counts.sum()), 1)  # mass of the tokens before
    label = np.zeros(n_vocab, dtype=np.int8)
    label[order[before < FREQ_MASS]] = 1  # starts inside the first half of all occurrences
    label[order[(before >= 1 - RARE_MASS) & (counts[order] > 0)]] = 2  # lies wholly in the last tenth
    return label


def build(tok: Tok, text: str, n: int, seed: int, max_len: int) -> list[Item]:
    """Windows with frequent and rare probes, n of each (fewer when the corpus runs out)."""
    stream = np.asarray(tok.encode(text), dtype=np.int64)
    label = buckets(stream, int(stream.max()) + 1 if stream.size else 1)
    start = tok.start()
    width = min(WINDOW, max_len) - len(start)  # corpus tokens per window
    offsets = list(range(0, max(len(stream) - width, 0), width))
    rng_for("next-token", seed).shuffle(offsets)
    have = {FREQUENT: 0, RARE: 0}
    items = []
    for off in offsets:
        if min(have.values()) >= n:
            break
        ids = start + [int(t) for t in stream[off:off + width]]
        probes = []
        for pos in range(len(ids) // 2, len(ids) - 1):
            kind = label[ids[pos + 1]]
            group = FREQUENT if kind == 1 else RARE if kind == 2 else None
            if group and have[group] < n:
                have[group] += 1
                probes.append(Probe(group, pos, ids[pos + 1]))
        if probes:
            items.append(Item(ids, probes))
    return items
