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


def windows(tokens: list[int], n_ctx: int, bos_id: int | None, n_chunks: int | None) -> list[np.ndarray]:
    """llama-perplexity's windows of `tokens` (rules 2-4 of the module docstring); InputError when too short."""
    if n_ctx < 4:
        raise InputError(f"--ctx {n_ctx} is too small for perplexity; use at least 4 (512 is usual)")
    if len(tokens) < 2 * n_ctx:
        raise InputError(f"the text tokenizes to {len(tokens)} tokens but perplexity with --ctx {n_ctx} needs at "
                         f"least {2 * n_ctx}; use a longer text or a smaller --ctx")
    n_chunk = len(tokens) // n_ctx
    if n_chunks is not None and n_chunks > 0:
        n_chunk = min(n_chunk, n_chunks)
    toks = np.asarray(tokens, dtype=np.int64)
    out = []
    for i in range(n_chunk):
        window = toks[i * n_ctx:(i + 1) * n_ctx].copy()  # (n_ctx,)
        if bos_id is not None:
            window[0] = bos_id
        out.append(window)
    return out


def scored_logits(session, window: np.ndarray) -> np.ndarray:
    """Logits (n_ctx - 1 - first, V) that predict window[first + 1:], from an empty cache (rule 5)."""
    n_ctx = len(window)
    first = n_ctx // 2
    session.reset()
    logits = session.feed(window, n_logits=n_ctx - first)  # positions first .. n_ctx-1
    return logits[:-1]


def mean_and_error(total: float, total2: float, count: int) -> tuple[float, float]:
    """Mean and its standard error from a sum and a sum of squares (llama-perplexity's estimate)."""
    if count < 1:
        return 0.0, 0.0
    mean = total / count
    var = total2 / count - mean * mean
    return mean, (math.sqrt(var / (count - 1)) if var > 0 and count > 1 else 0.0)


def perplexity(session, tokens: list[int], bos_id: int | None, n_chunks: int | None = None,
               on_chunk: Callable[[int, int, float], None] | None = None) -> PerplexityResult:
    """Perplexity of `tokens` (already tokenized with BOS as the model adds it) with windows of session.n_ctx.

    bos_id: set each window's first token to it (None when the model adds no BOS).
    on_chunk(i, n_chunk, running_ppl) is called after each window.
    """
    n_ctx = session.n_ctx
    wins = windows(tokens, n_ctx, bos_id, n_chunks)
    first = n_ctx // 2
    nll = nll2 = 0.0
    count = 0
    running = []
    t0 = time.perf_counter()
    for i, window in enumerate(wins):
        v = token_nll(scored_logits(session, window), window[first + 1:])  # (n_ctx - 1 - first,)
        nll += float(v.sum())
        nll2 += float(np.square(v).sum())
        count += v.size
        running.append(math.exp(nll / count))
        if on_chunk:
            on_chunk(i, len(wins), running[-1])
    seconds = time.perf_counter() - t0
    session.reset()
    mean, err = mean_and_error(nll, nll2, count)
    ppl = math.exp(mean)
    return PerplexityResult(ppl, err * ppl, mean, count, len(wins), n_ctx, len(tokens), seconds, running)


# -- KL divergence against a base model (llama-perplexity --kl-divergence) -------------------------
@dataclass
class KLResult:
    """Outcome of `kl_divergence()`: the model (Q) against a base model on the same windows and positions.

    kl_mean: mean over scored positions of KL(base || Q) = sum_v p_base(v) * (log p_base(v) - log p_Q(v)),
    in nats, with its standard error; top1_same: fraction of positions whose most likely
    token is the same for both (with its binomial error); ppl / ppl_base: each model's
    perplexity on these positions; kl_p99 / kl_max: the 99th percentile and largest KL.
    """

    kl_mean: float
    kl_error: float
    kl_median: float
    kl_p99: float
    kl_max: float
    top1_same: float
    top1_error: float
    ppl: float
    ppl_base: float
    n_scored: int
    n_chunks: int
    n_ctx: int
    seconds: float

    @property
    def dppl(self) -> float:
        """PPL(Q) - PPL(base)."""
        return self.ppl - self.ppl_base

    def as_dict(self) -> dict:
        """Every field plus dppl."""
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "dppl": self.dppl}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(N, V) logits -> float64 log-probabilities."""
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)  # (N, 1)
    return x - (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))


def window_kl(logits: np.ndarray, base_logits: np.ndarray, targets: np.ndarray):
    """Per position (KL(base || Q), same top token, NLL of Q, NLL of base) of one window's scored logits.

    logits, base_logits (N, V) of the two models at the same positions; targets (N,) the next tokens.
    """
    n_vocab = min(logits.shape[1], base_logits.shape[1])
    lq, lb = log_softmax(logits[:, :n_vocab]), log_softmax(base_logits[:, :n_vocab])  # (N, V) each
    kl = (np.exp(lb) * (lb - lq)).sum(axis=1)  # (N,)
    same = lq.argmax(axis=1) == lb.argmax(axis=1)  # (N,)
    rows = np.arange(len(targets))
    return np.maximum(kl, 0.0), same, -lq[rows, targets], -lb[rows, targets]


def kl_divergence(session, base_session, tokens: list[int], bos_id: int | None, n_chunks: int | None = None,
                  on_chunk: Callable[[int, int, float], None] | None = None) -> KLResult:
    """KL divergence of `session`'s model from `base_session`'s, with llama-perplexity's windows.

    Both sessions must have the same n_ctx. Window by window, each model runs the window from an
    empty cache and only that window's scored logits are held (the positions of `perplexity()`:
    the second half of each window), so memory does not grow with the text. The definition is
    llama-perplexity --kl-divergence's, computed in float64 from the base model's logits
    directly (llama.cpp stores the base log-probabilities as 16-bit codes over a 16-nat range
    and drops terms with log p_base <= -16; the difference is far below the statistical error).
    on_chunk(i, n_chunk, running_mean_kl) is called after each window.
    """
    n_ctx = session.n_ctx
    if base_session.n_ctx != n_ctx:
        raise InputError(f"the base model's context {base_session.n_ctx} differs from {n_ctx}")
    wins = windows(tokens, n_ctx, bos_id, n_chunks)
    first = n_ctx // 2
    kls, sames, nll, nll_base = [], [], 0.0, 0.0
    t0 = time.perf_counter()
    for i, window in enumerate(wins):
        targets = window[first + 1:]  # (n_ctx - 1 - first,)
        kl, same, v, vb = window_kl(scored_logits(session, window), scored_logits(base_session, window), targets)
        kls.append(kl)
        sames.append(same)
        nll += float(v.sum())
        nll_base += float(vb.sum())
        if on_chunk:
            on_chunk(i, len(wins), float(np.concatenate(kls).mean()))
    seconds = time.perf_counter() - t0
    session.reset()
    base_session.reset()
    kl, same = np.concatenate(kls), np.concatenate(sames)
    count = kl.size
    kl_mean, kl_err = mean_and_error(float(kl.sum()), float(np.square(kl).sum()), count)
    top1 = float(same.mean())
    top1_err = math.sqrt(top1 * (1 - top1) / (count - 1)) if count > 1 else 0.0
    return KLResult(kl_mean, kl_err, float(np.median(kl)), float(np.percentile(kl, 99)), float(kl.max()), top1,
                    top1_err, math.exp(nll / count), math.exp(nll_base / count), count, len(wins), n_ctx, seconds)
