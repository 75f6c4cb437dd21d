"""Batched decode: several generations advance together, one forward per step for all of them.

    bd = BatchDecoder(model, max_batch=4)
    s = bd.add(prompt_ids, max_tokens, params, stops, should_stop)   # prefill alone (its own KV cache)
    while bd.active:
        for stream, text, finished in bd.step():                     # one token for every active stream
            ...

Each stream keeps its own KV cache (a Session from the decoder's pool, so a conversation's
prefix is reused as in `Model.chat`), its own sampler, stop rules and text decoder (the
`generate.Decoder` that single generations use). A step runs the weight matrices once over
B rows (`forward_rows`): the packed kernels share each weight load across the rows, and the
Python work per layer is paid once instead of B times. Attention stays per stream, against
its own cache. Backends without the CPU block steps (MLX) step the streams one by one.

Why: measured by scripts/probe_batched_decode.py and scripts/bench_serve.py (see
docs/architecture.md); `edgeslim serve --parallel N` uses it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .backends.base import CPUBackend
from .generate import Decoder, GenerationStats, Session, check_prompt
from .handle import SessionPool
from .sampling import Sampler, SamplingParams


def forward_rows(backend: CPUBackend, tokens: Sequence[int], caches: list) -> np.ndarray:
    """One decode step of B sequences: token b appended to caches[b]; logits (B, V) float32."""
    ids = np.asarray(tokens, dtype=np.int64)  # (B,)
    for c in caches:
        backend.check_ids(ids[:1], c)
    be = backend
    x = be.embed(be.embd, ids)  # (B, D)
    for bid, w in enumerate(be.layers):
        h = be.norm(x, w["attn_norm"])  # (B, D)
        qkv = be.project_qkv(w, h)  # (B, (H + 2 Hkv) Hd) or a (q, k, v) tuple
        rows = [_row(qkv, b) for b in range(len(caches))]
        a = np.concatenate([be.attend(bid, r, c, c.pos) for r, c in zip(rows, caches)])  # (B, H*Hd)
        x = x + be.matmul(w["attn_output"], a)
        h = be.norm(x, w["ffn_norm"])
        x = x + be.matmul(w["ffn_down"], be.ffn_act(w, h))  # (B, D)
    for c in caches:
        c.advance(1)
    return be.matmul(be.output, be.norm(np.ascontiguousarray(x), be.out_norm))  # (B, V)


def _row(qkv, b: int):
    if isinstance(qkv, tuple):
        return tuple(np.ascontiguousarray(a[b:b + 1]) for a in qkv)
    return np.ascontiguousarray(qkv[b:b + 1])


@dataclass(eq=False)
class Stream:
    """One generation inside a batch."""

    session: Session
    decoder: Decoder
    stats: GenerationStats
    logits: np.ndarray  # (V,) for the next choice
    t0: float
    owner: object = None  # the caller's handle (the server's Job)


class BatchDecoder:
    """Up to `max_batch` generations of one model, advanced one token per step together."""

    def __init__(self, model, max_batch: int = 4):
        self.model = model
        self.max_batch = max(1, int(max_batch))
        self.pool = SessionPool(lambda: Session(model._backend, model.n_ctx, model.n_batch),
                                max(self.max_batch, model._pool.slots))
        self.active: list[Stream] = []
        self.batched = isinstance(model._backend, CPUBackend)

    def add(self, ids: list[int], max_tokens: int, params: SamplingParams, stops: list[str],
            should_stop: Callable[[], str | None], owner=None) -> Stream:
        """Prefill `ids` on a free cache (reusing a shared prefix) and make it active."""
        check_prompt(len(ids), self.model.n_ctx, self.model.hparams.context_length)
        stats = GenerationStats()
        busy = {s.session for s in self.active}
        t0 = time.perf_counter()
        with self.model._hold(True):
            session = self.pool.pick(ids, True, busy)
            n_keep = session.keep_prefix(ids)
            logits = session.feed(ids[n_keep:])[-1]
        stats.prompt_tokens, stats.prompt_evaluated = len(ids), len(ids) - n_keep
        stats.prompt_seconds = time.perf_counter() - t0
        dec = Decoder(session, self.model.tokenizer, Sampler(params), list(ids), max_tokens, stops, stats,
                      should_stop)
        stream = Stream(session, dec, stats, logits, time.perf_counter(), owner)
        self.active.append(stream)
        return stream

    def step(self) -> list[tuple[Stream, str, bool]]:
        """Advance every active stream by one token: [(stream, text, finished)]; finished ones leave."""
        out, feed = [], []
        for s in self.active:
            if s.decoder.done:  # max_tokens 0, or stopped before its first token
                out.append((s, s.decoder.tail(), True))
                continue
            text, tok = s.decoder.step(s.logits)
            if tok is not None and s.decoder.may_continue():
                feed.append((s, tok))
                out.append((s, text, False))
            else:
                out.append((s, text + s.decoder.tail(), True))
        if feed:
            with self.model._hold(True):
                logits = self._forward([t for _, t in feed], [s.session for s, _ in feed])
            now = time.perf_counter()
            for (s, tok), row in zip(feed, logits):
                s.session.tokens.append(tok)
                s.logits = row
                s.stats.decode_steps += 1
                s.stats.decode_seconds = now - s.t0
        self.active = [s for s, _, finished in out if not finished]
        return out

    def _forward(self, tokens: list[int], sessions: list[Session]) -> np.ndarray:
        if len(tokens) == 1 or not self.batched:  # one row: exactly the single-generation path
            return np.stack([s.backend.forward([t], s.cache)[-1] for t, s in zip(tokens, sessions)])
        return forward_rows(self.model._backend, tokens, [s.cache for s in sessions])
