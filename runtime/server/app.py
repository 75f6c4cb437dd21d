"""The Starlette application: routes, OpenAI-shaped errors for everything, and the chat page.

    app = build_app(model, ServerConfig(model_name="demo"))
    uvicorn.run(app, host="127.0.0.1", port=8080)

The app owns a Scheduler (one generation thread); `app.state.serve.sched.close()` stops it
(done on shutdown).
"""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import routes
from .config import ServerConfig
from .errors import APIError
from .scheduler import Scheduler

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("edgeslim.serve")


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    if exc.status_code == 404:
        msg = f"no route {request.method} {request.url.path}; see GET /v1/models, POST /v1/chat/completions, " \
              "POST /v1/completions, GET /health"
        return JSONResponse(APIError(404, msg, code="not_found").body(), status_code=404)
    if exc.status_code == 405:
        msg = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse(APIError(405, msg, code="method_not_allowed").body(), status_code=405)
    return JSONResponse(APIError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)


async def _crash(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return JSONResponse(APIError(500, f"internal server error ({exc.__class__.__name__}); the server keeps "
                                      "serving").body(), status_code=500)


async def _page(request: Request) -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})


def build_app(model, cfg: ServerConfig | None = None, on_start=None) -> Starlette:
    """A Starlette app serving `model` (an edgeslim Model) with the limits in `cfg`; on_start runs once
    in the generation thread (see Scheduler)."""
    cfg = cfg or ServerConfig()
    sched = Scheduler(model, cfg.max_queue, cfg.max_per_client, on_start, cfg.max_batch)
    table = [
        Route("/health", routes.health, methods=["GET"]),
        Route("/v1/models", routes.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", routes.get_model, methods=["GET"]),
        Route("/v1/chat/completions", routes.chat_completions, methods=["POST"]),
        Route("/v1/completions", routes.completions, methods=["POST"]),
    ]
    if cfg.page:
        table += [Route("/", _page, methods=["GET"]), Mount("/static", StaticFiles(directory=STATIC), name="static")]

    @asynccontextmanager
    async def lifespan(app):
        yield
        sched.close()

    app = Starlette(routes=table, lifespan=lifespan,
                    exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _crash})
    app.state.serve = routes.ServeState(model, sched, cfg)
    return app
