"""The shapes of tool results: JSON payloads, `terminal` output, and errors (`isError`).

A failed API call or a bad argument is a tool *result* with `isError: true`, so the agent
reads the reason and can correct itself; protocol errors are for unknown tools only.
"""

from __future__ import annotations

import json
from typing import Any

from mcp import types

from chaser.client import ChaserAPIError, ChaserClientError

__all__ = ["api_error_result", "error_result", "json_result", "terminal_result"]

# The first line of a `terminal` result: what an agent needs to keep using the same sandbox.
_TERMINAL_HEADER_KEYS = ("session_id", "workspace_id", "exit_code", "status", "output_truncated")


def _text(text: str) -> list[types.ContentBlock]:
    return [types.TextContent(type="text", text=text)]


def error_result(code: str, message: str, **extra: Any) -> types.CallToolResult:
    error = {"code": code, "message": message, **{k: v for k, v in extra.items() if v is not None}}
    return types.CallToolResult(content=_text(f"error: {code}: {message}"),
                                structured_content={"error": error}, is_error=True)


def api_error_result(exc: ChaserClientError) -> types.CallToolResult:
    if isinstance(exc, ChaserAPIError):
        return error_result(exc.code, exc.message, status=exc.status, request_id=exc.request_id)
    return error_result(exc.code, exc.message)


def json_result(payload: Any, key: str | None = None) -> types.CallToolResult:
    """`payload` as indented JSON text; under `key` in structuredContent when it is not an object."""
    structured = {key: payload} if key is not None else payload
    return types.CallToolResult(content=_text(json.dumps(payload, indent=2)), structured_content=structured)


def terminal_result(structured: dict[str, Any], body: str, *, is_error: bool = False) -> types.CallToolResult:
    header = {key: structured.get(key) for key in _TERMINAL_HEADER_KEYS}
    text = json.dumps(header) + ("\n" + body if body else "")
    return types.CallToolResult(content=_text(text), structured_content=structured, is_error=is_error)
