"""Helpers for the server tests: start `edgeslim serve` as a subprocess on a free loopback port."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


class Server:
    """A running `edgeslim serve` subprocess (stderr in a log file)."""

    def __init__(self, proc: subprocess.Popen, base: str, log: Path):
        self.proc, self.base, self.log = proc, base, log
        self.port = int(base.rsplit(":", 1)[1])

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            return json.loads(r.read())

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def wait_idle(self, timeout: float = 30.0) -> dict:
        end = time.monotonic() + timeout
        while True:
            h = self.get("/health")
            if (not h["busy"] and h["waiting"] == 0) or time.monotonic() > end:
                return h
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_server(model: Path, log: Path, *extra: str, timeout: float = 180.0) -> Server:
    """`edgeslim serve model --port 0 *extra`; waits for its 'chat page http://...' line."""
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    fh = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "edgeslim.cli", "serve", str(model), "--port", "0", *extra],
                            stdout=fh, stderr=subprocess.STDOUT, env=env)
    fh.close()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = re.search(r"chat page http://([\d.]+):(\d+)/", log.read_text())
        if m:
            server = Server(proc, f"http://{m.group(1)}:{m.group(2)}", log)
            server.get("/health")
            return server
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()}")
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the server did not start in {timeout}s: {log.read_text()}")


def sse_request(base: str, path: str, body: dict, headers: dict | None = None) -> socket.socket:
    """Send a POST over a raw socket (so the test can hang up mid-stream); returns the socket."""
    host, port = base.removeprefix("http://").split(":")
    raw = json.dumps(body).encode()
    head = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
            f"Content-Length: {len(raw)}", *(f"{k}: {v}" for k, v in (headers or {}).items()), "", ""]
    s = socket.create_connection((host, int(port)), timeout=30)
    s.sendall("\r\n".join(head).encode() + raw)
    return s


def read_events(s: socket.socket, n: int) -> tuple[int, list[str]]:
    """Read until n `data:` events have arrived (or the stream ends); (status, events)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    events: list[str] = []
    buf = rest
    while len(events) < n:
        events = re.findall(rb"data: (.*?)\n\n", buf)
        if len(events) >= n or b"[DONE]" in buf:
            break
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return status, [e.decode() for e in re.findall(rb"data: (.*?)\n\n", buf)]
