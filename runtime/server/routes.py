"""The endpoints: /v1/chat/completions, /v1/completions, /v1/models, /health."""
from __future__ import annotations

import asyncio
import os
import secrets
import time
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from ...errors import EdgeslimError
from .config import ServerConfig
from .errors import APIError, bad
from .render import Renderer
from .respond import JobResponse
from .scheduler import Job, Scheduler
from .schemas import GenRequest, chat_request, completion_request, parse_json


@dataclass
class ServeState:
    """What every handler needs (kept in app.state.serve)."""

    model: object
    sched: Scheduler
    cfg: ServerConfig


def state(request: Request) -> ServeState:
    return request.app.state.serve


def check_auth(request: Request, cfg: ServerConfig) -> None:
    """401 unless the server has no key or the request carries `Authorization: Bearer <key>`."""
    if cfg.api_key is None:
        return
    got = request.headers.get("authorization", "")
    scheme, _, token = got.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), cfg.api_key.encode()):
        raise APIError(401, "missing or wrong API key; send the header 'Authorization: Bearer <key>'",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it passes `limit` bytes (declared or actual)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise bad("the Content-Length header is not a number")
        if int(declared) > limit:
            raise APIError(413, f"the request body is {int(declared)} bytes; the limit is {limit} "
                                "(start the server with a larger --max-body)", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the request body is over the limit of {limit} bytes "
                                "(start the server with a larger --max-body)", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def health(request: Request) -> JSONResponse:
    st = state(request)
    return JSONResponse({"status": "ok", "model": st.cfg.model_name, "busy": bool(st.sched.running),
                         "running": len(st.sched.running), "waiting": st.sched.waiting, **st.sched.counts})


def _model_card(st: ServeState) -> dict:
    m = st.model
    return {"id": st.cfg.model_name, "object": "model", "created": int(os.path.getmtime(m.path)),
            "owned_by": "edgeslim", "meta": {"arch": m.hparams.arch, "n_ctx": m.n_ctx, "backend": m.backend}}


async def list_models(request: Request) -> JSONResponse:
    st = state(request)
    check_auth(request, st.cfg)
    return JSONResponse({"object": "list", "data": [_model_card(st)]})


async def get_model(request: Request) -> JSONResponse:
    st = state(request)
    check_auth(request, st.cfg)
    if request.path_params["model"] != st.cfg.model_name:
        raise APIError(404, f"no model {request.path_params['model']!r}; this server serves {st.cfg.model_name!r}",
                       "model", "model_not_found")
    return JSONResponse(_model_card(st))


async def chat_completions(request: Request) -> JobResponse:
    st = state(request)
    check_auth(request, st.cfg)
    req = chat_request(parse_json(await read_body(request, st.cfg.max_body_bytes)), st.cfg)
    ids = await _in_thread(st.model.chat_tokens, req.messages)
    return _submit(request, st, req, ids, req.stop + st.model.chat_stops(), chat=True)


async def completions(request: Request) -> JobResponse:
    st = state(request)
    check_auth(request, st.cfg)
    req = completion_request(parse_json(await read_body(request, st.cfg.max_body_bytes)), st.cfg)
    if isinstance(req.prompt, str):
        ids = await _in_thread(st.model.tokenize, req.prompt, special=True)
    else:
        ids = req.prompt
        n_vocab = st.model.hparams.n_vocab
        if min(ids) < 0 or max(ids) >= n_vocab:
            raise bad(f"'prompt' has a token id outside the vocabulary of {n_vocab}", "prompt")
    return _submit(request, st, req, ids, req.stop, chat=False)


async def _in_thread(fn, *args, **kwargs):
    """Tokenizing / rendering a template off the event loop; the library's errors become 400s."""
    try:
        return await run_in_threadpool(fn, *args, **kwargs)
    except EdgeslimError as err:
        raise bad(str(err)) from None


def _submit(request: Request, st: ServeState, req: GenRequest, ids: list[int], stops: list[str],
            chat: bool) -> JobResponse:
    n_ctx = st.model.n_ctx
    room = n_ctx - len(ids)
    if not ids:
        raise bad("the prompt is empty", "prompt")
    if room < 1:
        raise bad(f"the prompt is {len(ids)} tokens but the context is {n_ctx}; shorten it (or restart the server "
                  "with a larger --ctx)", "messages" if chat else "prompt", "context_length_exceeded")
    max_tokens = min(st.cfg.default_max_tokens, room) if req.max_tokens is None else req.max_tokens
    if max_tokens > room:
        raise bad(f"max_tokens {max_tokens} plus the prompt's {len(ids)} tokens exceed the context of {n_ctx}; "
                  f"ask for at most {room}", "max_tokens", "context_length_exceeded")
    client = req.user or request.headers.get("authorization") or (request.client.host if request.client else "-")
    job = Job(ids, max_tokens, req.params, stops, client, time.monotonic() + st.cfg.timeout_s,
              asyncio.get_running_loop())
    st.sched.submit(job)
    return JobResponse(job, st.sched, Renderer(chat, st.cfg.model_name), req.stream, req.include_usage)
