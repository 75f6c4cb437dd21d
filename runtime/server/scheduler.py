"""The fair, bounded queue of generation jobs and the one thread that runs them.

    sched = Scheduler(model, max_queue=16, max_per_client=16, max_batch=4)
    job = Job(ids, max_tokens, params, stops, client="alice", deadline=now + 300, loop=loop)
    sched.submit(job)          # APIError 503 (queue full) / 429 (this client's share) otherwise
    ev = await job.events.get()   # ("start", None), ("text", str)..., ("done", stats) | ("error", exc)
    sched.withdraw(job)        # the client went away: drop it from the queue / stop it within a token

Fairness: each client (request `user`, else API key, else peer address) has its own
FIFO; the worker admits jobs round robin over clients, so a client with ten queued
requests does not delay another client's single one by ten generations.

The worker thread admits up to `max_batch` jobs at once (`edgeslim serve --parallel`):
each is prefilled alone, then all running jobs advance one token per step in one batched
forward (runtime/batch.py). Up to max_queue more wait; beyond that, 503 with Retry-After.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from ...errors import EdgeslimError
from ..batch import BatchDecoder
from ..sampling import SamplingParams
from .errors import APIError

log = logging.getLogger("edgeslim.serve")


@dataclass(eq=False)
class Job:
    """One request's generation; events flow from the worker thread to the request's event loop."""

    ids: list[int]
    max_tokens: int
    params: SamplingParams
    stops: list[str]
    client: str
    deadline: float  # time.monotonic() by which it must end
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    state: str = "new"  # new | queued | running | done

    def emit(self, kind: str, value=None) -> None:
        """Hand an event to the request's loop (thread-safe; dropped if the loop is gone)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # loop closed: the server is shutting down
            self.cancel.set()


class Scheduler:
    """Round-robin queue over clients, bounded, served by one daemon thread."""

    def __init__(self, model, max_queue: int = 16, max_per_client: int = 16, on_start=None, max_batch: int = 1,
                 make_decoder=BatchDecoder):
        """max_batch: generations decoded together (runtime/batch.py); on_start: called once in the
        generation thread before the first job (thread-local settings, e.g. numba's thread count);
        make_decoder(model, max_batch): the batch decoder (tests pass a fake)."""
        self.model = model
        self._make_decoder = make_decoder
        self.max_batch = max(1, int(max_batch))
        self._on_start = on_start
        self.max_queue, self.max_per_client = max(0, max_queue), max(1, max_per_client)
        self._cond = threading.Condition()
        self._queues: OrderedDict[str, deque[Job]] = OrderedDict()  # clients in round-robin order
        self._waiting = 0
        self.running: set[Job] = set()
        self.counts = {"served": 0, "cancelled": 0, "generated_tokens": 0}
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="edgeslim-generate", daemon=True)
        self._thread.start()

    # -- queue ------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job, or raise APIError 503 / 429 when there is no room."""
        with self._cond:
            mine = self._queues.get(job.client)
            if self._waiting >= self.max_queue and (self.running or self._waiting > 0):
                raise APIError(503, f"the server is busy: {self._waiting} requests are waiting (queue limit "
                                    f"{self.max_queue}); retry in a few seconds", code="queue_full",
                               headers={"Retry-After": "2"})
            if mine is not None and len(mine) >= self.max_per_client:
                raise APIError(429, f"this client already has {len(mine)} requests waiting (limit "
                                    f"{self.max_per_client}); wait for them or retry later", code="too_many_requests",
                               headers={"Retry-After": "2"})
            self._queues.setdefault(job.client, deque()).append(job)
            self._waiting += 1
            job.state = "queued"
            self._cond.notify()

    def withdraw(self, job: Job) -> None:
        """The client is gone: unqueue the job, or stop it before its next token."""
        job.cancel.set()
        with self._cond:
            q = self._queues.get(job.client)
            if job.state == "queued" and q is not None and job in q:
                q.remove(job)
                self._waiting -= 1
                job.state = "done"
                if not q:
                    del self._queues[job.client]

    @property
    def waiting(self) -> int:
        return self._waiting

    def _take(self, n: int, wait: bool) -> list[Job]:
        """Up to n queued jobs, round robin over clients; with wait, block until there is one (or closed)."""
        with self._cond:
            while wait and not self._closed and self._waiting == 0:
                self._cond.wait()
            jobs = []
            while len(jobs) < n and self._waiting and not self._closed:
                client, q = next(iter(self._queues.items()))
                job = q.popleft()
                del self._queues[client]
                if q:  # back of the line for this client's next job
                    self._queues[client] = q
                self._waiting -= 1
                job.state = "running"
                self.running.add(job)
                jobs.append(job)
            return jobs

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for q in self._queues.values():
                for job in q:
                    job.cancel.set()
                    job.emit("error", APIError(503, "the server is shutting down", code="shutting_down"))
            self._queues.clear()
            self._waiting = 0
            self._cond.notify_all()
        for job in list(self.running):
            job.cancel.set()

    # -- worker -------------------------------------------------------------------------
    def _loop(self) -> None:
        if self._on_start is not None:
            self._on_start()
        bd = self._make_decoder(self.model, self.max_batch)
        while not self._closed:
            for job in self._take(self.max_batch - len(bd.active), wait=not bd.active):
                self._admit(bd, job)
            if bd.active and not self._closed:
                self._step(bd)

    def _admit(self, bd: BatchDecoder, job: Job) -> None:
        """Prefill a job into the batch, or answer it now (gone, timed out, bad input)."""
        if job.cancel.is_set():
            return self._end(job)
        if time.monotonic() >= job.deadline:
            job.emit("error", APIError(503, "the request timed out waiting in the queue; retry later",
                                       code="queue_timeout", headers={"Retry-After": "2"}))
            return self._end(job)
        try:
            bd.add(job.ids, job.max_tokens, job.params, job.stops, lambda: _why_stop(job), owner=job)
            job.emit("start")
        except EdgeslimError as err:  # e.g. a prompt the model cannot take
            job.emit("error", APIError(400, str(err)))
            self._end(job)
        except Exception as err:  # a bug: log it, answer 500, keep serving
            log.exception("prefill failed")
            job.emit("error", APIError(500, f"internal error during generation: {err.__class__.__name__}"))
            self._end(job)

    def _step(self, bd: BatchDecoder) -> None:
        try:
            results = bd.step()
        except Exception as err:  # a bug: every running job gets a 500, the server goes on
            log.exception("decode step failed")
            for s in bd.active:
                s.owner.emit("error", APIError(500, f"internal error during generation: {err.__class__.__name__}"))
                self._end(s.owner)
            bd.active.clear()
            return
        for stream, text, finished in results:
            job = stream.owner
            if text:
                job.emit("text", text)
            if finished:
                self.counts["generated_tokens"] += stream.stats.generated_tokens
                self.counts["cancelled"] += stream.stats.finish_reason == "cancelled"
                job.emit("done", stream.stats)
                self._end(job)

    def _end(self, job: Job) -> None:
        job.state = "done"
        self.running.discard(job)
        self.counts["served"] += 1


def _why_stop(job: Job) -> str | None:
    """A running job's should_stop: the client left, or its time is up."""
    if job.cancel.is_set():
        return "cancelled"
    if time.monotonic() >= job.deadline:
        return "time_limit"
    return None
