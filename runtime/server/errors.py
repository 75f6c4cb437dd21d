"""API errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}} with a status code.

4xx for every client mistake; 503/429 when the queue is full; 500 only for a bug
(logged, with a short message, and the server keeps serving).
"""
from __future__ import annotations

import json

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
         503: "server_error", 500: "server_error"}


class APIError(Exception):
    """An error answer: status, one-line message, and optional param / code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}

    def json_bytes(self) -> bytes:
        return json.dumps(self.body()).encode()


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 for a malformed or out-of-range request field."""
    return APIError(400, message, param, code)
