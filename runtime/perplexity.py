"""Perplexity with llama-perplexity's windowing, so numbers compare with llama.cpp's.

The rules (llama.cpp tools/perplexity/perplexity.cpp, `perplexity()` without --ppl-stride):
  1. tokenize the whole text once, adding BOS when the model's tokenizer says so
     (common_tokenize(ctx, text, add_special=true), special tokens not parsed);
  2. need at least 2 * n_ctx tokens;
  3. split into n_chunk = len // n_ctx non-overlapping windows of n_ctx tokens
     (the tail is dropped; --chunks K takes the first K);
  4. in each window replace the first token by BOS (when the model adds BOS) and
     run it from an empty cache;
  5. score only the second half: with first = n_ctx // 2, the logits at positions
     first .. n_ctx-2 predict tokens first+1 .. n_ctx-1 (n_ctx - 1 - first per window);
  6. PPL = exp(mean NLL); its error is PPL * sqrt((E[nll^2] - E[nll]^2) / (count - 1)).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import InputError


@dataclass
class PerplexityResult:
    """Outcome of `perplexity()`. `ppl_error` is llama.cpp's "+/-" value."""

    ppl: float
    ppl_error: float
    mean_nll: float
    n_scored: int  # tokens whose probability was scored
    n_chunks: int
    n_ctx: int
    n_tokens: int  # tokens the whole text tokenized to
    seconds: float
    chunk_ppl: list[float] = field(default_factory=list)  # running PPL after each chunk

    @property
    def tokens_per_second(self) -> float:
        """Tokens run through the model per second (n_chunks * n_ctx / seconds)."""
        return self.n_chunks * self.n_ctx / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        """The summary numbers (without the per-chunk list)."""
        d = {k: getattr(self, k) for k in ("ppl", "ppl_error", "mean_nll", "n_scored", "n_chunks", "n_ctx",
                                           "n_tokens", "seconds")}
        d["tokens_per_second"] = self.tokens_per_second
        return d


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, in float64.  logits (N, V), targets (N,)."""
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)  # (N, 1)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
    return lse - x[np.arange(len(targets)), targets]


def perplexity(session, tokens: list[int], bos_id: int | None, n_chunks: int | None = None,
               on_chunk: Callable[[int, int, float], None] | None = None) -> PerplexityResult:
    """Perplexity of `tokens` (already tokenized with BOS as the model adds it) with windows of session.n_ctx.

    bos_id: set each window's first token to it (None when the model adds no BOS).
    on_chunk(i, n_chunk, running_ppl) is called after each window.
    """
    n_ctx = session.n_ctx
    if n_ctx < 4:
        raise InputError(f"--ctx {n_ctx} is too small for perplexity; use at least 4 (512 is usual)")
    if len(tokens) < 2 * n_ctx:
        raise InputError(f"the text tokenizes to {len(tokens)} tokens but perplexity with --ctx {n_ctx} needs at "
                         f"least {2 * n_ctx}; use a longer text or a smaller --ctx")
    n_chunk = len(tokens) // n_ctx
    if n_chunks is not None and n_chunks > 0:
        n_chunk = min(n_chunk, n_chunks)
    first = n_ctx // 2
    toks = np.asarray(tokens, dtype=np.int64)
    nll = nll2 = 0.0
    count = 0
    running = []
    t0 = time.perf_counter()
    for i in range(n_chunk):
        window = toks[i * n_ctx:(i + 1) * n_ctx].copy()
        if bos_id is not None:
            window[0] = bos_id
        session.reset()
        logits = session.feed(window, n_logits=n_ctx - first)  # positions first .. n_ctx-1
        v = token_nll(logits[:-1], window[first + 1:])  # (n_ctx - 1 - first,)
        nll += float(v.sum())
        nll2 += float(np.square(v).sum())
        count += v.size
        running.append(math.exp(nll / count))
        if on_chunk:
            on_chunk(i, n_chunk, running[-1])
    seconds = time.perf_counter() - t0
    session.reset()
    mean = nll / count
    var = nll2 / count - mean * mean
    err = math.sqrt(var / (count - 1)) if var > 0 and count > 1 else 0.0
    ppl = math.exp(mean)
    return PerplexityResult(ppl, err * ppl, mean, count, n_chunk, n_ctx, len(tokens), seconds, running)
