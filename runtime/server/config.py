"""The server's limits and identity, set from `edgeslim serve` flags (defaults here)."""
from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20


@dataclass
class ServerConfig:
    """Limits a request must stay within; every breach is a 4xx/503 answer, never a crash."""

    model_name: str = "edgeslim"
    api_key: str | None = None  # when set, /v1/* need "Authorization: Bearer <key>"
    max_body_bytes: int = 4 * MiB  # 413 above this
    max_messages: int = 512  # 400 above this
    max_stop: int = 4  # stop strings per request, as OpenAI
    default_max_tokens: int = 512  # when a request gives none (capped by the context left)
    max_batch: int = 4  # generations decoded together, one batched forward per step (--parallel)
    max_queue: int = 16  # waiting requests (not counting running ones); 503 when full
    max_per_client: int = 16  # waiting requests of one client; 429 above (<= max_queue to matter)
    timeout_s: float = 300.0  # per request, queue wait + generation; generation ends "length" there
    page: bool = True  # serve the chat page at /
