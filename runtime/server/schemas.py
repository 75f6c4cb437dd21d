"""Request bodies -> validated requests; every mistake is a 400 naming the field.

Accepted (OpenAI's names): model (any string; one model is served), messages / prompt,
max_tokens (or max_completion_tokens), temperature [0, 2], top_p (0, 1], stop (string or
up to 4 strings), seed, n (only 1), stream, stream_options.include_usage, user; and
llama.cpp server's extensions top_k, min_p, repeat_penalty, ignore_eos. presence_penalty and
frequency_penalty are range-checked and must be 0 (not implemented; llama.cpp's
repeat_penalty is). Features edgeslim does not have (tools, logprobs, n > 1, echo,
suffix, images) are refused with a 400 rather than silently ignored. Unknown fields are
ignored, as clients send vendor extras.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from ..sampling import SamplingParams
from .config import ServerConfig
from .errors import bad

ROLES = ("system", "user", "assistant", "developer", "tool")
UNSUPPORTED = {"tools": "tool calls", "functions": "function calls", "tool_choice": "tool calls",
               "function_call": "function calls", "logit_bias": "logit_bias", "audio": "audio output"}


@dataclass
class GenRequest:
    """What both endpoints share once validated."""

    max_tokens: int | None
    params: SamplingParams
    stop: list[str]
    stream: bool = False
    include_usage: bool = False
    user: str | None = None


@dataclass
class ChatRequest(GenRequest):
    messages: list[dict] = field(default_factory=list)  # [{"role", "content": str}]


@dataclass
class CompletionRequest(GenRequest):
    prompt: str | list[int] = ""


def parse_json(raw: bytes) -> dict:
    """The body as a JSON object, or a 400."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise bad("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _num(body: dict, name: str, lo: float, hi: float, default, lo_open: bool = False):
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise bad(f"'{name}' must be a number", name)
    if v < lo or v > hi or (lo_open and v == lo):
        raise bad(f"'{name}' is {v}; it must be {'>' if lo_open else '>='} {lo} and <= {hi}", name)
    return v


def _int(body: dict, name: str, lo: int, hi: int, default):
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"'{name}' must be an integer", name)
    if not lo <= v <= hi:
        raise bad(f"'{name}' is {v}; it must be between {lo} and {hi}", name)
    return v


def _flag(body: dict, name: str) -> bool:
    v = body.get(name, False)
    if not isinstance(v, bool):
        raise bad(f"'{name}' must be true or false", name)
    return v


def _stop(body: dict, cfg: ServerConfig) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("'stop' must be a string or a list of strings", "stop")
    if len(stops) > cfg.max_stop:
        raise bad(f"'stop' has {len(stops)} strings; at most {cfg.max_stop} are allowed", "stop")
    return [s for s in stops if s]


def _common(body: dict, cfg: ServerConfig) -> dict:
    """Fields shared by chat and completions (sampling, limits, streaming)."""
    for name, what in UNSUPPORTED.items():
        if body.get(name):
            raise bad(f"'{name}' is not supported: this server does not do {what}", name)
    if body.get("logprobs") not in (None, False, 0) or body.get("top_logprobs"):
        raise bad("'logprobs' is not supported by this server", "logprobs")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("'model' must be a string", "model")
    if _int(body, "n", 1, 1 << 30, 1) != 1:
        raise bad("'n' must be 1: this server returns one choice per request", "n")
    for name in ("presence_penalty", "frequency_penalty"):
        if _num(body, name, -2.0, 2.0, 0.0) != 0:
            raise bad(f"'{name}' is not supported; use 'repeat_penalty' (llama.cpp's) instead", name)
    max_tokens = _int(body, "max_completion_tokens", 0, 1 << 30, None)
    max_tokens = _int(body, "max_tokens", 0, 1 << 30, max_tokens)
    d = SamplingParams()
    params = SamplingParams(
        temperature=float(_num(body, "temperature", 0.0, 2.0, 1.0)),  # OpenAI's default is 1
        top_k=_int(body, "top_k", 0, 1 << 30, d.top_k), top_p=float(_num(body, "top_p", 0.0, 1.0, 1.0, True)),
        min_p=float(_num(body, "min_p", 0.0, 1.0, d.min_p)),
        repeat_penalty=float(_num(body, "repeat_penalty", 0.0, 10.0, 1.0, True)),
        seed=_int(body, "seed", -(1 << 63), (1 << 64) - 1, None), ignore_eos=_flag(body, "ignore_eos"))
    if params.seed is not None and params.seed < 0:
        params = params.with_(seed=params.seed & ((1 << 64) - 1))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("'stream' must be true or false", "stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict) or not isinstance(opts.get("include_usage", False), bool):
        raise bad("'stream_options' must be an object like {\"include_usage\": true}", "stream_options")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad("'user' must be a string", "user")
    return dict(max_tokens=max_tokens, params=params, stop=_stop(body, cfg), stream=stream,
                include_usage=bool(opts.get("include_usage", False)), user=user or None)


def _content(m: dict, i: int) -> str:
    c = m.get("content")
    if c is None and m.get("role") == "assistant":
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        parts = []
        for part in c:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"messages[{i}].content: only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                          "are supported", f"messages[{i}].content")
            parts.append(part["text"])
        return "".join(parts)
    raise bad(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")


def chat_request(body: dict, cfg: ServerConfig) -> ChatRequest:
    """A validated /v1/chat/completions request."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad("'messages' must be a non-empty list of {\"role\", \"content\"} objects", "messages")
    if len(msgs) > cfg.max_messages:
        raise bad(f"'messages' has {len(msgs)} entries; at most {cfg.max_messages} are allowed", "messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]")
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"messages[{i}].role must be one of {', '.join(ROLES)}", f"messages[{i}].role")
        out.append({"role": "system" if role == "developer" else role, "content": _content(m, i)})
    return ChatRequest(messages=out, **_common(body, cfg))


def completion_request(body: dict, cfg: ServerConfig) -> CompletionRequest:
    """A validated /v1/completions request (prompt: a string, [string], or [token ids])."""
    best_of = body.get("best_of")
    for name, used in (("suffix", bool(body.get("suffix"))), ("echo", body.get("echo") not in (None, False)),
                       ("best_of", best_of is not None and (isinstance(best_of, bool) or best_of != 1))):
        if used:
            raise bad(f"'{name}' is not supported by this server", name)
    p = body.get("prompt", "")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    ok_ids = isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
    if not isinstance(p, str) and not ok_ids:
        raise bad("'prompt' must be a string, a list of one string, or a list of token ids", "prompt")
    return CompletionRequest(prompt=p, **_common(body, cfg))
