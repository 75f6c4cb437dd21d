"""OpenAI response objects: whole replies, stream chunks, usage, for chat and text completions."""
from __future__ import annotations

import secrets
import time

from ..generate import GenerationStats

# edgeslim's finish reasons -> OpenAI's ("length" also covers a full context and the time limit)
FINISH = {"eog": "stop", "stop": "stop", "length": "length", "context": "length", "time_limit": "length",
          "cancelled": "stop", "interrupted": "stop"}


def usage(stats: GenerationStats) -> dict:
    """OpenAI usage, with the prompt tokens served from the KV cache as cached_tokens."""
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.generated_tokens,
            "total_tokens": stats.prompt_tokens + stats.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": stats.prompt_tokens - stats.prompt_evaluated}}


class Renderer:
    """Builds one request's objects (same id and timestamp throughout)."""

    def __init__(self, chat: bool, model_name: str):
        self.chat, self.model = chat, model_name
        self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())

    def _head(self, chunk: bool) -> dict:
        obj = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": "edgeslim"}

    def whole(self, text: str, stats: GenerationStats) -> dict:
        """The non-streaming reply."""
        reason = FINISH.get(stats.finish_reason, "stop")
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        return {**self._head(False), "choices": [choice], "usage": usage(stats)}

    def chunk(self, text: str | None = None, finish: str | None = None, first: bool = False) -> dict:
        """A stream chunk: the first carries the role (chat), the last the finish reason."""
        if self.chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {**self._head(True), "choices": [choice]}

    def final(self, stats: GenerationStats, include_usage: bool) -> list[dict]:
        """The finish chunk, then (when asked) the usage chunk with no choices."""
        out = [self.chunk(finish=FINISH.get(stats.finish_reason, "stop"))]
        if include_usage:
            out.append({**self._head(True), "choices": [], "usage": usage(stats)})
        return out
