"""`Generation`: the handle `Model.stream` / `stream_chat` return, and the cache-slot pool.

    gen = model.stream_chat(messages, max_tokens=256)
    threading.Thread(target=lambda: [show(p) for p in gen]).start()
    ...
    gen.cancel()            # from any thread: generation ends before its next token
    gen.stats.finish_reason # "cancelled"

A Generation is an iterator of text pieces. Nothing runs (and the model's lock is
not taken) until the first `next()`; the lock is released when the iterator ends,
is closed, or is garbage-collected. `cancel()` may be called at any time from any
thread, also before iteration starts (the generation then ends at once).
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Iterator, Sequence

from .generate import GenerationStats, Session


class Generation:
    """An iterator of text pieces with `cancel()`, `close()` and live `stats` (see the module docstring)."""

    def __init__(self, start: Callable[[Callable[[], str | None], GenerationStats], Iterator[str]],
                 cancel=None, time_limit: float | None = None):
        self.stats = GenerationStats()
        self._start = start
        self._it: Iterator[str] | None = None
        self._cancelled = threading.Event()
        self._external = cancel  # anything with is_set(), e.g. a threading.Event shared by several calls
        self._time_limit = time_limit
        self._deadline: float | None = None

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> str:
        if self._it is None:
            if self._time_limit is not None:
                self._deadline = time.monotonic() + float(self._time_limit)
            self._it = self._start(self._should_stop, self.stats)
        return next(self._it)

    def _should_stop(self) -> str | None:
        if self._cancelled.is_set() or (self._external is not None and self._external.is_set()):
            return "cancelled"
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return "time_limit"
        return None

    def cancel(self) -> None:
        """Ask the generation to stop before its next token (thread-safe; the iterator then ends)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def close(self) -> None:
        """Stop now and release the model (call from the thread that iterates)."""
        self._cancelled.set()
        if self._it is not None:
            self._it.close()

    def text(self) -> str:
        """Run to the end and return all the text."""
        return "".join(self)


class SessionPool:
    """Up to `slots` KV caches, so up to `slots` interleaved conversations each keep their history cached.

    A prompt goes to the cache it continues: the one sharing the longest prefix with it, if that
    prefix is at least half of what the cache holds (a new conversation that only shares the
    chat template's opening or a system prompt must not evict another conversation). Otherwise it
    takes an unused cache, else the least recently used one (keeping whatever prefix that shares).
    """

    def __init__(self, make: Callable[[], Session], slots: int = 1):
        self._make = make
        self.slots = max(1, int(slots))
        self.sessions: list[Session] = []  # least recently used first

    def pick(self, ids: Sequence[int], reuse: bool, busy=()) -> Session:
        """The cache for prompt `ids` (never one in `busy`: caches of generations still running)."""
        free = [s for s in self.sessions if s not in busy]
        best, best_n = None, 0
        if reuse:
            for s in free:
                n = s.shared_prefix(ids)
                if n > best_n and 2 * n >= len(s.tokens):
                    best, best_n = s, n
        if best is None:
            if len(self.sessions) < self.slots or not free:
                best = self._make()
            else:
                best = free[0]
        if best in self.sessions:
            self.sessions.remove(best)
        self.sessions.append(best)
        return best

    def reset(self) -> None:
        for s in self.sessions:
            s.reset()

    def clear(self) -> None:
        self.sessions = []
