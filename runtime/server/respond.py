"""ASGI responses that follow a queued Job: one JSON reply, or server-sent events ending in [DONE].

Written as plain ASGI callables (rather than starlette's StreamingResponse) because the
response itself must (1) choose its status only once the job has left the queue (a queue
timeout is a 503, not a 200 stream with an error inside) and (2) watch for the client's
disconnect the whole time, including while the job is still queued, so that a client that
goes away is dropped from the queue or stopped before its next token.
"""
from __future__ import annotations

import asyncio
import json
import time

from .errors import APIError
from .render import Renderer
from .scheduler import Job, Scheduler

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]


async def send_json(send, status: int, obj: dict, headers: dict | None = None) -> None:
    """A complete JSON response."""
    body = json.dumps(obj).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    hdrs += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send, err: APIError) -> None:
    await send_json(send, err.status, err.body(), err.headers)


def sse(obj) -> bytes:
    """One server-sent event: `data: <json>` (or the literal [DONE])."""
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


class JobResponse:
    """Waits for the job to start, then answers whole or as a stream; stops the job if the client leaves."""

    def __init__(self, job: Job, sched: Scheduler, renderer: Renderer, stream: bool, include_usage: bool):
        self.job, self.sched, self.r = job, sched, renderer
        self.stream, self.include_usage = stream, include_usage

    async def __call__(self, scope, receive, send) -> None:
        watcher = asyncio.ensure_future(self._watch(receive))
        try:
            kind, value = await self._first()
            if kind == "error":
                await send_error(send, value)
            elif kind == "start":
                await (self._sse(send) if self.stream else self._whole(send))
        finally:
            watcher.cancel()
            self.sched.withdraw(self.job)  # no-op when it already ended

    async def _watch(self, receive) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                self.sched.withdraw(self.job)
                self.job.events.put_nowait(("gone", None))
                return

    async def _first(self):
        """The first event, or a 503 once the request's time runs out while it waits in the queue."""
        left = self.job.deadline - time.monotonic()
        try:
            return await asyncio.wait_for(self.job.events.get(), timeout=max(left, 0.001))
        except asyncio.TimeoutError:
            if self.job.state != "queued":  # admitted (its prompt is being read): its own time limit ends it
                return await self.job.events.get()
            self.sched.withdraw(self.job)
            return "error", APIError(503, "the request timed out waiting in the queue; retry later",
                                     code="queue_timeout", headers={"Retry-After": "2"})

    async def _whole(self, send) -> None:
        parts = []
        while True:
            kind, value = await self.job.events.get()
            if kind == "text":
                parts.append(value)
            elif kind == "done":
                return await send_json(send, 200, self.r.whole("".join(parts), value))
            elif kind == "error":
                return await send_error(send, value)
            else:  # gone
                return

    async def _sse(self, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})

        async def body(data: bytes, more: bool = True) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": more})

        if self.r.chat:
            await body(sse(self.r.chunk(first=True)))
        while True:
            kind, value = await self.job.events.get()
            if kind == "text":
                await body(sse(self.r.chunk(value)))
            elif kind == "done":
                for obj in self.r.final(value, self.include_usage):
                    await body(sse(obj))
                break
            elif kind == "error":
                await body(sse(value.body()))
                break
            else:  # gone: nothing more can be sent
                return
        await body(sse("[DONE]"), more=False)
