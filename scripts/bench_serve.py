"""Serve benchmark: requests/s and time to first token at 1, 4 and 16 concurrent clients, edgeslim's server
side by side with llama-cpp-python's `llama_cpp.server` on the same GGUF file and the same prompts.

    python scripts/bench_serve.py                        # demo model (Q8_0), 1/4/16 clients
    python scripts/bench_serve.py --model m.gguf --clients 1 4 16 --requests 8 --max-tokens 64

Each client sends --requests streaming chat requests one after another (greedy,
--max-tokens each; prompts cycle through PROMPTS, offset per client so that concurrent
requests differ). Measured per request from the client: time to the first content
token (TTFT) and the whole request; per run: completed requests per second of wall
time and streamed content chunks per second. Both servers are started here as
subprocesses on loopback, one at a time (never both at once), with the same context
size, and warmed with one request first. llama_cpp.server runs with
`--interrupt_requests False`: by default it ends a streaming reply when another request
arrives, which would make concurrent clients receive empty replies. The peer needs llama-cpp-python plus its
server extras (fastapi, sse-starlette, starlette-context, pydantic-settings); without
them only edgeslim's column is printed.

Ratios are edgeslim / llama.cpp for requests/s (higher is better for edgeslim) and
llama.cpp / edgeslim for TTFT (higher is better for edgeslim). Run on a quiet machine
for numbers that go into docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

PROMPTS = ["Tell me a story about a cat.", "Tell me a story about a dragon.", "Tell me a story about a boat.",
           "Tell me a story about a garden.", "Tell me a story about a robot.", "Tell me a story about the moon.",
           "Tell me a story about a red ball.", "Tell me a story about a little bird."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.25)
    raise RuntimeError(f"server not ready after {timeout}s: {log.read_text()[-2000:]}")


def start(kind: str, model: Path, ctx: int, threads: int, workdir: Path, parallel: int = 1
          ) -> tuple[subprocess.Popen, str]:
    """Start one server; returns (process, base URL). parallel: edgeslim's --parallel."""
    port = free_port()
    log = workdir / f"{kind}.log"
    if kind == "edgeslim":
        cmd = [sys.executable, "-m", "edgeslim.cli", "serve", str(model), "--port", str(port), "--ctx", str(ctx),
               "--queue", "256", "--threads", str(threads), "--parallel", str(parallel)]
    else:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", str(ctx), "--n_threads", str(threads),
               "--interrupt_requests", "False"]  # queue, as edgeslim
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    wait_ready(base + "/v1/models", proc, log)
    return proc, base


def one_request(base: str, prompt: str, max_tokens: int) -> dict:
    """One streamed chat request: TTFT, total seconds, content chunks."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                       "temperature": 0, "stream": True}).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    ttft, chunks = None, 0
    with urllib.request.urlopen(req, timeout=600) as resp:
        for line in resp:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            ev = json.loads(line[6:])
            delta = (ev.get("choices") or [{}])[0].get("delta") or {}
            if delta.get("content"):
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
    return {"ttft": ttft if ttft is not None else float("nan"), "total": time.perf_counter() - t0, "chunks": chunks}


def run_load(base: str, clients: int, requests: int, max_tokens: int) -> dict:
    results: list[dict] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        for r in range(requests):
            res = one_request(base, PROMPTS[(i + r) % len(PROMPTS)], max_tokens)
            with lock:
                results.append(res)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done = [r for r in results if r["chunks"] > 0]  # a reply with no content is not a served request
    ttfts = sorted(r["ttft"] for r in done) or [float("nan")]
    return {"clients": clients, "requests": len(done), "empty": len(results) - len(done), "wall_s": wall,
            "req_per_s": len(done) / wall,
            "chunks_per_s": sum(r["chunks"] for r in results) / wall, "ttft_p50_ms": 1e3 * statistics.median(ttfts),
            "ttft_p90_ms": 1e3 * ttfts[min(len(ttfts) - 1, int(0.9 * len(ttfts)))]}


def bench(kind: str, model: Path, args, workdir: Path, parallel: int = 1) -> list[dict]:
    proc, base = start(kind, model, args.ctx, args.threads, workdir, parallel)
    try:
        one_request(base, PROMPTS[0], args.max_tokens)  # warm-up (JIT, caches)
        return [run_load(base, c, args.requests, args.max_tokens) for c in args.clients]
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def peer_available() -> str | None:
    """None when llama_cpp.server can run here, else why not."""
    try:
        import llama_cpp  # noqa: F401
        import llama_cpp.server.app  # noqa: F401
    except Exception as err:  # ImportError, or a missing server extra
        return f"{type(err).__name__}: {err}"
    return None


def demo_model(workdir: Path) -> Path:
    import edgeslim
    from edgeslim.demo import DEMO_DIR

    out = workdir / "demo-q8_0.gguf"
    edgeslim.convert(DEMO_DIR, out, quant="Q8_0", progress=False)
    return out


def table(ours: list[dict], peer: list[dict] | None) -> str:
    head = f"{'clients':>7} {'edgeslim req/s':>14} {'TTFT p50 ms':>11} {'TTFT p90 ms':>11} {'chunks/s':>9}"
    if peer:
        head += (f" | {'llama.cpp req/s':>15} {'TTFT p50 ms':>11} {'chunks/s':>9} | {'req/s ratio':>11} "
                 f"{'TTFT ratio':>10}")
    lines = [head]
    for i, a in enumerate(ours):
        line = (f"{a['clients']:>7} {a['req_per_s']:>14.2f} {a['ttft_p50_ms']:>11.1f} {a['ttft_p90_ms']:>11.1f} "
                f"{a['chunks_per_s']:>9.1f}")
        if peer:
            b = peer[i]
            line += (f" | {b['req_per_s']:>15.2f} {b['ttft_p50_ms']:>11.1f} {b['chunks_per_s']:>9.1f} | "
                     f"{a['req_per_s'] / b['req_per_s']:>11.2f} {b['ttft_p50_ms'] / a['ttft_p50_ms']:>10.2f}")
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="GGUF file both servers load (default: the demo model as Q8_0)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=4, help="requests per client per run")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                    help="CPU threads for both servers (default: half the cores, llama-cpp-python's default)")
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 4],
                    help="edgeslim --parallel values to measure (batched decode); one table each")
    ap.add_argument("--no-peer", action="store_true", help="measure edgeslim only")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = args.model or demo_model(workdir)
        why = "--no-peer" if args.no_peer else peer_available()
        ours = {n: bench("edgeslim", model, args, workdir, n) for n in args.parallel}
        peer = None if why else bench("llamacpp", model, args, workdir)
    print(f"model {model.name}, {args.requests} streamed chat requests per client, max_tokens {args.max_tokens}, "
          f"greedy, ctx {args.ctx}, {args.threads} threads each, {os.cpu_count()} CPUs")
    for n, runs in ours.items():
        print(f"\nedgeslim serve --parallel {n}" + (" vs llama_cpp.server (one request at a time)" if peer else ""))
        print(table(runs, peer))
    for name, runs in [(f"edgeslim --parallel {n}", r) for n, r in ours.items()] + [("llama.cpp", peer or [])]:
        for r in runs:
            if r["empty"]:
                print(f"{name} at {r['clients']} clients: {r['empty']} replies had no content (not counted)")
    if why:
        print(f"llama.cpp's server not measured: {why}")
    if args.json:
        args.json.write_text(json.dumps({"edgeslim": {f"parallel_{n}": r for n, r in ours.items()},
                                         "llamacpp": peer}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
