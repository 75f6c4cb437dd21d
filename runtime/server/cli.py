"""`edgeslim serve FILE [--host 127.0.0.1] [--port 8080] [--api-key KEY]`: OpenAI-compatible server + chat page.

Before binding it checks, each failure one line: the file (a GGUF model, not a folder),
the memory it needs against what this machine has available (weights + KV caches +
overhead, `--skip-fit-check` to try anyway), and the port (bound here, then handed to
uvicorn, so nothing can take it in between). Binds to 127.0.0.1 unless --host says
otherwise. The API key may also come from $EDGESLIM_API_KEY (then it is not visible in
the process list).
"""
from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from ...errors import FitError, InputError
from ..cli_common import BACKEND_CHOICES, load_model, note
from .config import MiB, ServerConfig

SIZE_UNITS = {"": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": MiB, "mb": MiB, "mib": MiB}


def add_args(p) -> None:
    p.add_argument("model", metavar="FILE", help="GGUF model file")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--api-key", default=os.environ.get("EDGESLIM_API_KEY"), metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $EDGESLIM_API_KEY, else none)")
    p.add_argument("--name", default=None, help="model id in /v1/models (default: the file name without .gguf)")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES)
    p.add_argument("-c", "--ctx", type=int, default=None, metavar="N",
                   help="context per request (KV cache size); default min(model context, 4096)")
    p.add_argument("--kv-dtype", default="float16", choices=("float16", "float32"))
    p.add_argument("--batch", type=int, default=512, metavar="N", help="prompt tokens per batched forward")
    p.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                   help="CPU threads for the numba kernels (default: all cores; on a busy machine or for a small "
                        "model fewer can be much faster)")
    p.add_argument("--cache-slots", type=int, default=1, metavar="N",
                   help="conversations whose KV cache is kept for prefix reuse (each costs one --ctx cache; "
                        "default 1: the last conversation)")
    d = ServerConfig()
    p.add_argument("-np", "--parallel", type=int, default=d.max_batch, metavar="N",
                   help=f"requests generated together, one batched forward per token (each holds its own --ctx "
                        f"cache, allocated when used; lowered to what fits memory; default {d.max_batch})")
    p.add_argument("--queue", type=int, default=d.max_queue, metavar="N",
                   help=f"requests that may wait while one generates; more get 503 (default {d.max_queue})")
    p.add_argument("--per-client", type=int, default=None, metavar="N",
                   help="waiting requests per client (its 'user' field, API key or address); more get 429 "
                        "(default: the --queue size)")
    p.add_argument("--timeout", type=float, default=d.timeout_s, metavar="S",
                   help=f"seconds per request, waiting included; generation ends there (default {d.timeout_s:g})")
    p.add_argument("--max-body", default="4MiB", metavar="SIZE", help="largest request body (default 4MiB)")
    p.add_argument("--max-messages", type=int, default=d.max_messages, metavar="N",
                   help=f"messages per chat request (default {d.max_messages})")
    p.add_argument("--max-tokens", type=int, default=d.default_max_tokens, metavar="N",
                   help=f"reply length when a request gives no max_tokens (default {d.default_max_tokens})")
    p.add_argument("--no-page", action="store_true", help="do not serve the chat page at /")
    p.add_argument("--skip-fit-check", action="store_true", help="start even if the model seems not to fit memory")
    p.add_argument("--log-requests", action="store_true", help="print one line per request (uvicorn's access log)")


def parse_size(text: str) -> int:
    """'4MiB' / '512k' / '1048576' -> bytes; InputError otherwise."""
    t = str(text).strip().lower().replace(" ", "")
    num = t.rstrip("kmib")
    unit = t[len(num):]
    try:
        value = float(num)
    except ValueError:
        value = -1.0
    if unit not in SIZE_UNITS or value <= 0:
        raise InputError(f"--max-body {text!r} is not a size; write e.g. 4MiB, 512k or 1048576")
    return int(value * SIZE_UNITS[unit])


def config_from(args) -> ServerConfig:
    """ServerConfig from parsed flags, range-checked."""
    for flag, value, lo in (("--queue", args.queue, 0), ("--max-messages", args.max_messages, 1),
                            ("--max-tokens", args.max_tokens, 1), ("--cache-slots", args.cache_slots, 1),
                            ("--parallel", args.parallel, 1),
                            ("--per-client", args.per_client or 1, 1)):
        if value < lo:
            raise InputError(f"{flag} {value} must be at least {lo}")
    if not args.timeout > 0:
        raise InputError(f"--timeout {args.timeout} must be a positive number of seconds")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port} is not a port number (0-65535)")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads {args.threads} must be at least 1")
    name = args.name or Path(args.model).name.removesuffix(".gguf")
    return ServerConfig(model_name=name, api_key=args.api_key or None, max_body_bytes=parse_size(args.max_body),
                        max_messages=args.max_messages, default_max_tokens=args.max_tokens, max_queue=args.queue,
                        max_per_client=args.per_client or max(1, args.queue), timeout_s=args.timeout,
                        max_batch=args.parallel,
                        page=not args.no_page)


def check_fits(args) -> int:
    """How many KV caches fit the memory available now (at most max(--cache-slots, --parallel));
    FitError when not even one does. --parallel and --cache-slots are lowered to that (with a note)."""
    from ...fit_check import fit

    want = max(args.cache_slots, args.parallel)
    per = 2 if args.kv_dtype == "float32" else 1
    for n in range(want, 0, -1):
        ans = fit(args.model, None, args.ctx, backend=args.backend, cache_slots=n * per)
        if ans.fits:
            break
    if not ans.fits:
        f = ans.fit
        raise FitError(f"{args.model} needs {_gib(f.total_bytes)} (weights {_gib(f.weights_bytes)} + KV cache "
                       f"{_gib(f.kv_bytes)} at ctx {f.ctx} + overhead) but this machine has "
                       f"{_gib(f.target.usable_bytes)} available; use a smaller --ctx, a smaller model, "
                       "or --skip-fit-check")
    if n < want:
        args.parallel, args.cache_slots = min(args.parallel, n), min(args.cache_slots, n)
        note(f"edgeslim serve: note: memory for {n} KV cache(s) of ctx {ans.fit.ctx}, not {want}: --parallel "
             f"{args.parallel}, --cache-slots {args.cache_slots}")
    return n


def _gib(n: int) -> str:
    from ...targets import gib

    return gib(n)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line InputError (port in use, no permission, unknown host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise InputError(f"--host {host!r} is not an address of this machine ({err.strerror})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise InputError(f"port {port} on {host} is already in use; stop the other server or pass "
                             f"--port {port + 1}") from None
        if err.errno == errno.EACCES:
            raise InputError(f"no permission to listen on port {port}; use a port above 1023") from None
        raise InputError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    sock.set_inheritable(True)
    return sock


def _thread_setup(threads: int | None, backend: str):
    """What the generation thread runs first: numba's thread count is per calling thread."""
    if threads is None or backend != "numba":
        return None

    def setup() -> None:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))

    return setup


def _require_stack() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise InputError("edgeslim serve needs starlette and uvicorn: pip install 'edgeslim[serve]'") from None


def run(args) -> int:
    _require_stack()
    import uvicorn

    from ..loader import open_model
    from .app import build_app

    config_from(args)  # flag errors first
    open_model(args.model).gguf.close()  # a GGUF model runnable here, checked before anything else
    if not args.skip_fit_check:
        check_fits(args)
    cfg = config_from(args)
    sock = bind(args.host, args.port)
    try:
        model = load_model(args)
        app = build_app(model, cfg, _thread_setup(args.threads, model.backend))
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        note(f"edgeslim serve: {model.hparams.arch} model {cfg.model_name!r}, backend {model.backend}, context "
             f"{model.n_ctx}; chat page http://{shown}:{port}/ , OpenAI API http://{shown}:{port}/v1")
        if args.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
            note("edgeslim serve: warning: listening beyond this machine without --api-key; anyone who can reach "
                 "it can use it")
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=args.log_requests,
                                               timeout_keep_alive=5, timeout_graceful_shutdown=3))
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0

