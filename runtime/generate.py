"""Token generation: batched prefill, step-by-step decode, stop rules, streaming text, stats.

    session = Session(backend, n_ctx)
    for piece in generate(session, tokenizer, prompt_ids, max_tokens=64, params=SamplingParams(...)):
        print(piece, end="")

Stopping, in the order checked after each sampled token:
  "eog"      the model produced an end-of-generation token (not emitted)
  "stop"     a stop string appeared (the text before it is emitted, the rest dropped)
  "length"   max_tokens were generated
  "context"  the KV cache is full: the last token was emitted but cannot be fed
             back, so generation ends there (raise n_ctx / --ctx for longer output)
  any other  `should_stop()` returned that reason (e.g. "cancelled", "time_limit");
             it is asked before every forward, so a stop lands within one token
A prompt longer than the context raises InputError naming the limit and --ctx.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from ..errors import InputError
from .sampling import Sampler, SamplingParams

DEFAULT_BATCH = 512  # prompt tokens per batched forward (bounds attention memory)


@dataclass
class GenerationStats:
    """What one generation did and how fast."""

    prompt_tokens: int = 0  # tokens in the prompt
    prompt_evaluated: int = 0  # of those, run through the model (the rest reused from the cache)
    prompt_seconds: float = 0.0
    generated_tokens: int = 0  # tokens emitted (the EOG token is not counted)
    decode_steps: int = 0  # single-token forwards after the prompt
    decode_seconds: float = 0.0  # time of those forwards plus sampling
    finish_reason: str = "interrupted"  # eog | stop | length | context | interrupted | a should_stop reason
    extra: dict = field(default_factory=dict)

    @property
    def prompt_tps(self) -> float:
        """Prompt tokens evaluated per second."""
        return self.prompt_evaluated / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        """Decode steps per second."""
        return self.decode_steps / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def summary(self) -> str:
        """One line for stderr."""
        return (f"prompt: {self.prompt_tokens} tokens ({self.prompt_evaluated} evaluated) "
                f"{self.prompt_tps:.1f} tok/s | generated: {self.generated_tokens} tokens "
                f"{self.decode_tps:.1f} tok/s | stop: {self.finish_reason}")


class Session:
    """A backend's KV cache plus the token ids it holds (so a shared prefix can be reused)."""

    def __init__(self, backend, n_ctx: int, n_batch: int = DEFAULT_BATCH):
        self.backend = backend
        self.cache = backend.new_cache(int(n_ctx))
        self.tokens: list[int] = []
        self.n_batch = max(1, int(n_batch))

    @property
    def n_ctx(self) -> int:
        return self.cache.n_ctx

    def reset(self) -> None:
        self.cache.reset()
        self.tokens = []

    def shared_prefix(self, ids: Sequence[int]) -> int:
        """How many leading tokens of `ids` the cache holds already (at most len(ids) - 1: one must run)."""
        n = 0
        limit = min(len(self.tokens), len(ids) - 1)
        while n < limit and self.tokens[n] == ids[n]:
            n += 1
        return n

    def keep_prefix(self, ids: Sequence[int]) -> int:
        """Keep the cached tokens shared with `ids` (leaving at least one of ids to run); returns the count kept."""
        n = self.shared_prefix(ids)
        self.cache.truncate(n)
        n = self.cache.pos  # a sliding-window ring may not give that much back (then 0)
        del self.tokens[n:]
        return n

    def feed(self, ids: Sequence[int], n_logits: int = 1) -> np.ndarray:
        """Run ids in batches of n_batch; logits (n_logits, V) of the last n_logits of them."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        T = ids.size
        n_logits = max(1, min(n_logits, T))
        first_needed = T - n_logits
        out = []
        for c0 in range(0, T, self.n_batch):
            chunk = ids[c0:c0 + self.n_batch]
            want = c0 + chunk.size - max(c0, first_needed)
            logits = self.backend.forward(chunk, self.cache, n_logits=max(want, 1))
            self.tokens.extend(int(t) for t in chunk)
            if want > 0:
                out.append(logits)
        return out[0] if len(out) == 1 else np.concatenate(out)


class StopMatcher:
    """Streams text while holding back any tail that could start a stop string."""

    def __init__(self, stops: Sequence[str] = ()):
        self.stops = [s for s in (stops or ()) if s]
        self.buf = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; returns (text safe to emit, whether a stop string was hit)."""
        self.buf += text
        if not self.stops:
            out, self.buf = self.buf, ""
            return out, False
        hits = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buf = self.buf[:min(hits)], ""
            return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.buf)), hold, -1):
                if self.buf.endswith(s[:k]):
                    hold = k
                    break
        cut = len(self.buf) - hold
        out, self.buf = self.buf[:cut], self.buf[cut:]
        return out, False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


def check_prompt(n_prompt: int, n_ctx: int, model_ctx: int) -> None:
    """InputError when the prompt cannot fit the context."""
    if n_prompt > n_ctx:
        want = 1 << (n_prompt + 256 - 1).bit_length()  # room for a reply, rounded up to a power of two
        hint = f"--ctx {want}" if want <= model_ctx else f"--ctx {max(model_ctx, n_prompt + 1)}"
        raise InputError(f"the prompt is {n_prompt} tokens but the context is {n_ctx}; pass {hint} "
                         f"(n_ctx= in Python) or shorten the prompt")


def generate(session: Session, tokenizer, prompt_ids: Sequence[int], max_tokens: int = 128,
             params: SamplingParams = SamplingParams(), stop: Sequence[str] = (),
             stats: GenerationStats | None = None, reuse_prefix: bool = False,
             should_stop: Callable[[], str | None] | None = None) -> Iterator[str]:
    """Yield text pieces of the continuation of prompt_ids (see the module docstring for stopping).

    reuse_prefix keeps cached tokens shared with the previous call's prompt+output
    (chat turns); otherwise the cache starts empty. `stats` is filled in as it runs.
    should_stop: called before every forward; a non-empty string ends generation with
    that finish_reason (cancellation from another thread, time limits).
    """
    stats = stats if stats is not None else GenerationStats()
    prompt_ids = [int(t) for t in prompt_ids]
    if not prompt_ids:
        raise InputError("the prompt is empty and the model adds no BOS token; give a prompt")
    if max_tokens < 0:
        raise InputError(f"max_tokens {max_tokens} must be >= 0")
    check_prompt(len(prompt_ids), session.n_ctx, session.backend.hp.context_length)
    sampler = Sampler(params)
    t0 = time.perf_counter()
    if reuse_prefix:
        n_keep = session.keep_prefix(prompt_ids)
    else:
        session.reset()
        n_keep = 0
    stats.prompt_tokens, stats.prompt_evaluated = len(prompt_ids), len(prompt_ids) - n_keep
    reason = should_stop() if should_stop is not None else None
    if reason:
        stats.finish_reason = reason
        return
    logits = session.feed(prompt_ids[n_keep:])[-1]  # (V,)
    stats.prompt_seconds = time.perf_counter() - t0
    yield from _decode(session, tokenizer, sampler, logits, list(prompt_ids), max_tokens, stop, stats,
                       should_stop or (lambda: None))


class Decoder:
    """One sequence's decode state: chooses each token, applies the stop rules (module docstring) and
    streams the text. Shared by `generate` (one sequence) and `batch.BatchDecoder` (many at once):

        d = Decoder(session, tokenizer, sampler, history, max_tokens, stop, stats, should_stop)
        while not d.done:
            text, tok = d.step(logits)        # emit text; tok is None once finished
            if tok is None or not d.may_continue(): break
            logits = <forward tok on session's cache>
        text = d.tail()                       # held-back text, once at the end
    """

    def __init__(self, session: Session, tokenizer, sampler: Sampler, history: list[int], max_tokens: int,
                 stop: Sequence[str], stats: GenerationStats, should_stop: Callable[[], str | None]):
        self.session, self.tokenizer, self.sampler, self.history = session, tokenizer, sampler, history
        self.max_tokens, self.stats, self.should_stop = max_tokens, stats, should_stop
        self.decoder = tokenizer.stream_decoder(prev_id=history[-1])
        self.stopper = StopMatcher(stop)
        self.n_tok = tokenizer.vocab_size  # the embedding may have padding rows past the vocabulary: never pick them
        self.banned = np.array(sorted(tokenizer.eog_ids), np.int64) if sampler.p.ignore_eos else None
        self.i, self.hit, self.done = 0, False, max_tokens == 0
        if self.done:
            stats.finish_reason = "length"

    def _finish(self, reason: str) -> None:
        self.stats.finish_reason, self.done = reason, True

    def step(self, logits: np.ndarray) -> tuple[str, int | None]:
        """Choose a token from logits (V,); (text to emit, the token to feed next or None when finished)."""
        logits = logits[:self.n_tok]  # (V,)
        if self.banned is not None and len(self.banned):
            logits = logits.copy()
            logits[self.banned[self.banned < self.n_tok]] = -np.inf
        tok = self.sampler(logits, self.history)
        if self.tokenizer.is_eog(tok):
            self._finish("eog")
            return "", None
        self.history.append(tok)
        self.stats.generated_tokens += 1
        text, self.hit = self.stopper.feed(self.decoder.push(tok))
        if self.hit:
            self._finish("stop")
        elif self.i == self.max_tokens - 1:
            self._finish("length")
        elif self.session.cache.free <= 0:
            self._finish("context")
        self.i += 1
        return text, None if self.done else tok

    def may_continue(self) -> bool:
        """Ask should_stop right before the next forward (after the text was handed out, so a cancel
        made while the caller held the last piece costs no further token)."""
        reason = self.should_stop()
        if reason:
            self._finish(reason)
        return not reason

    def tail(self) -> str:
        """The text held back at the end (a partial character or a possible stop-string start)."""
        if self.hit:
            return ""
        text, self.hit = self.stopper.feed(self.decoder.flush())
        if self.hit:
            self.stats.finish_reason = "stop"
        return text + ("" if self.hit else self.stopper.flush())


def _decode(session: Session, tokenizer, sampler: Sampler, logits: np.ndarray, history: list[int],
            max_tokens: int, stop: Sequence[str], stats: GenerationStats,
            should_stop: Callable[[], str | None]) -> Iterator[str]:
    d = Decoder(session, tokenizer, sampler, history, max_tokens, stop, stats, should_stop)
    t0 = time.perf_counter()
    try:
        while not d.done:
            text, tok = d.step(logits)
            if text:
                yield text
            if tok is None or not d.may_continue():
                break
            logits = session.feed([tok])[-1]
            stats.decode_steps += 1
            stats.decode_seconds = time.perf_counter() - t0
        text = d.tail()
        if text:
            yield text
    finally:
        stats.decode_seconds = time.perf_counter() - t0 if stats.decode_steps else 0.0
