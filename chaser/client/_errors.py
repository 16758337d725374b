"""Errors raised by the client.

    ChaserClientError            anything the client raises on purpose
    ├── ChaserAPIError           the server answered with an error status
    │                            (`status`, `code`, `message`, `request_id`)
    └── ChaserConnectionError    the server could not be reached or the
                                 connection broke (wraps the httpx error)
"""

from __future__ import annotations

import json
from typing import Any


class ChaserClientError(Exception):
    """Base class of every error the client raises."""

    code = "client_error"

    @property
    def message(self) -> str:
        return str(self)


class ChaserConnectionError(ChaserClientError):
    """The request never got an HTTP answer (refused, timed out, broken)."""

    code = "connection_error"


class ChaserAPIError(ChaserClientError):
    """The server answered with a 4xx/5xx and (usually) a `{"code","message"}` body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        request_id: str | None = None,
        *,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.request_id = request_id
        self.body = body

    def __str__(self) -> str:
        return self.args[0] if self.args else ""

    def __repr__(self) -> str:
        return (
            f"ChaserAPIError(status={self.status}, code={self.code!r}, "
            f"message={self.message!r}, request_id={self.request_id!r})"
        )


def _default_code(status: int) -> str:
    return {
        400: "invalid_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        409: "conflict",
        413: "payload_too_large",
        422: "invalid_request",
        429: "rate_limited",
    }.get(status, "server_error" if status >= 500 else "http_error")


def api_error_from_response(status: int, headers: Any, body: bytes) -> ChaserAPIError:
    """Build a ChaserAPIError from a raw error response; tolerant of non-JSON bodies."""
    code = _default_code(status)
    message = f"request failed with HTTP {status}"
    decoded: Any = None
    if body:
        try:
            decoded = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            decoded = None
            text = body.decode("utf-8", "replace").strip()
            if text:
                message = text[:500]
    if isinstance(decoded, dict):
        if isinstance(decoded.get("code"), str) and decoded["code"]:
            code = decoded["code"]
        elif isinstance(decoded.get("error"), str) and decoded["error"]:
            code = decoded["error"]
        detail = decoded.get("message") or decoded.get("detail")
        if isinstance(detail, str) and detail:
            message = detail
        elif detail is not None:  # e.g. FastAPI validation errors: a list
            message = json.dumps(detail)
    request_id = headers.get("x-request-id") if headers is not None else None
    return ChaserAPIError(status, code, message, request_id, body=decoded)
