"""Next-token choice: greedy, or llama.cpp-style sampling with a seeded numpy Generator.

Order (llama.cpp's default chain, minus the samplers it leaves off):
repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw.
top-k/top-p/min-p filter on the un-tempered distribution, as llama.cpp does,
so temperature changes only how the survivors are weighted. temperature <= 0
means greedy (argmax after the repetition penalty).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings. Defaults follow llama.cpp (temp 0.8, top-k 40, top-p 0.95, min-p 0.05)."""

    temperature: float = 0.8
    top_k: int = 40  # 0 = off
    top_p: float = 0.95  # 1.0 = off
    min_p: float = 0.05  # 0.0 = off
    repeat_penalty: float = 1.0  # 1.0 = off; >1 discourages tokens seen in the last repeat_last_n
    repeat_last_n: int = 64
    seed: int | None = None  # None = fresh entropy each call
    ignore_eos: bool = False  # never pick an end-of-generation token (llama.cpp's --ignore-eos; for benchmarks)

    def checked(self) -> "SamplingParams":
        """Self, or InputError naming the bad value."""
        bad = [(self.top_k < 0, f"top_k {self.top_k} must be >= 0"),
               (not 0.0 < self.top_p <= 1.0, f"top_p {self.top_p} must be in (0, 1]"),
               (not 0.0 <= self.min_p <= 1.0, f"min_p {self.min_p} must be in [0, 1]"),
               (self.repeat_penalty <= 0, f"repeat_penalty {self.repeat_penalty} must be > 0"),
               (self.repeat_last_n < 0, f"repeat_last_n {self.repeat_last_n} must be >= 0"),
               (not np.isfinite(self.temperature), f"temperature {self.temperature} must be finite")]
        for is_bad, msg in bad:
            if is_bad:
                raise InputError(msg)
        return self

    def with_(self, **changes) -> "SamplingParams":
        """A copy with the given (non-None) fields changed."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


class Sampler:
    """Chooses tokens from logits; holds the random generator for one generation."""

    def __init__(self, params: SamplingParams):
        self.p = params.checked()
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, history: list[int] | np.ndarray) -> int:
        """One token id from logits (V,), given the token history (prompt + generated)."""
        p = self.p
        x = np.array(logits, dtype=np.float32)  # (V,) own copy
        if p.repeat_penalty != 1.0 and p.repeat_last_n > 0 and len(history):
            penalize(x, history[-p.repeat_last_n:], p.repeat_penalty)
        if p.temperature <= 0:
            return int(np.argmax(x))
        ids, probs = filter_candidates(x, p.top_k, p.top_p, p.min_p)
        logit = x[ids].astype(np.float64) / p.temperature
        w = np.exp(logit - logit.max())
        return int(ids[self.rng.choice(len(ids), p=w / w.sum())])


def penalize(x: np.ndarray, recent, penalty: float) -> None:
    """llama.cpp's repetition penalty in place: positive logits / penalty, negative * penalty."""
    uniq = np.unique(np.asarray(recent, dtype=np.int64))
    uniq = uniq[(uniq >= 0) & (uniq < x.size)]
    vals = x[uniq]
    x[uniq] = np.where(vals > 0, vals / penalty, vals * penalty)


def filter_candidates(x: np.ndarray, top_k: int, top_p: float, min_p: float) -> tuple[np.ndarray, np.ndarray]:
    """Surviving token ids (sorted by logit, descending) and their un-tempered probabilities."""
    V = x.size
    k = V if top_k <= 0 else min(top_k, V)
    if k < V:
        ids = np.argpartition(-x, k - 1)[:k]
        ids = ids[np.argsort(-x[ids], kind="stable")]
    else:
        ids = np.argsort(-x, kind="stable")
    z = x[ids].astype(np.float64)
    probs = np.exp(z - z[0])
    probs /= probs.sum()
    keep = len(ids)
    if top_p < 1.0:  # smallest prefix whose mass reaches top_p (at least one token)
        keep = min(keep, int(np.searchsorted(np.cumsum(probs), top_p)) + 1)
    if min_p > 0.0:  # tokens at least min_p times as likely as the best one
        keep = min(keep, max(1, int(np.sum(probs[:keep] >= min_p * probs[0]))))
    return ids[:keep], probs[:keep]
