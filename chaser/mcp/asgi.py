"""The ASGI app behind `POST /v1/mcp`: auth pass-through, stateless streamable HTTP, JSON answers.

- `Authorization: Bearer sk_…` is required (else `401 {"code": "unauthorized", ...}`); the
  key is checked by the `authenticate` hook the API passes in (or, standalone, by one HTTP
  call to the API) and handed to the tools, which call the REST API with it.
- Stateless: every POST is a complete exchange; no `Mcp-Session-Id` is issued or needed.
- JSON responses (never SSE). A request whose `Accept` does not admit JSON (missing, or
  `text/event-stream` only) is treated as if it also said `application/json`, so a plain
  `curl -H 'Content-Type: application/json' -d '{...}'` works.
- The tools reach the API over loopback: the local address the request came in on
  (`scope["server"]`; https with `loopback_tls`, the context trusting the server's own
  certificate), unless `api_base_url` is given. Their calls carry the caller's `Host`
  and scheme, so URLs in the API's answers are the ones the caller can use.
"""

from __future__ import annotations

import inspect
import json
import logging
import ssl
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from mcp.server.lowlevel import Server
from mcp.server.streamable_http import check_accept_headers
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from chaser.mcp.server import (
    ACCOUNT_SCOPE_KEY,
    API_KEY_SCOPE_KEY,
    BASE_URL_SCOPE_KEY,
    HEADERS_SCOPE_KEY,
    TLS_SCOPE_KEY,
    build_server,
)

__all__ = ["MCPEndpoint", "bearer_token", "normalize_accept"]

Authenticate = Callable[[str], Any]
JSON_ACCEPT = "application/json"
# The SDK logs every stateless exchange at INFO ("session manager started", …): noise here.
_QUIET_LOGGERS = ("mcp.server.streamable_http", "mcp.server.streamable_http_manager")
MAX_REQUEST_BODY_BYTES = 32 * 1024 * 1024  # a write_file may carry up to the 16 MB transfer limit (+ JSON escaping)


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def normalize_accept(value: str | None) -> str:
    """An Accept value the SDK's JSON-response mode accepts: add application/json if it is not admitted."""
    value = (value or "").strip()
    request = Request({"type": "http", "headers": [(b"accept", value.encode("latin-1"))]})
    has_json, _ = check_accept_headers(request)
    if has_json:
        return value
    return f"{value}, {JSON_ACCEPT}" if value else JSON_ACCEPT


def _with_accept(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    values = [value.decode("latin-1") for key, value in headers if key.lower() == b"accept"]
    accept = normalize_accept(", ".join(values))
    return [(key, value) for key, value in headers if key.lower() != b"accept"] + [
        (b"accept", accept.encode("latin-1"))]


def loopback_base_url(scope: Scope, *, tls: bool = False) -> str:
    """The API as seen from this process: the local socket address of this very request.

    https only when this server terminates TLS itself (`tls`): `scope["scheme"]` may say
    https only because a local reverse proxy sent `X-Forwarded-Proto`.
    """
    scheme = "https" if tls else "http"
    server = scope.get("server")
    if server and server[1] is not None:
        host, port = server
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{port}"
    host = Headers(scope=scope).get("host") or "127.0.0.1:8080"
    return f"{scheme}://{host}"


def _with_headers(send: Send, headers: Mapping[str, str]) -> Send:
    extra = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]

    async def sender(message: Any) -> None:
        if message["type"] == "http.response.start":
            present = {name.lower() for name, _ in message.get("headers", ())}
            message = {**message, "headers": [*message.get("headers", ()),
                                              *(item for item in extra if item[0] not in present)]}
        await send(message)

    return sender


async def _json_error(send: Send, status: int, code: str, message: str,
                      headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"code": code, "message": message}).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(key.lower().encode(), value.encode()) for key, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


class MCPEndpoint:
    """ASGI app for `POST /v1/mcp`.

    `authenticate(key)` returns normally for a valid key and raises otherwise; an exception
    carrying an int `status` (4xx), `code` and `message` (Chaser's domain errors do) becomes
    that JSON error. Without the hook the key is checked with `GET /v1/sessions` on the API.
    """

    def __init__(self, *, authenticate: Authenticate | None = None, api_base_url: str | None = None,
                 server: Server[Any] | None = None, loopback_tls: ssl.SSLContext | None = None) -> None:
        self.authenticate = authenticate
        self.loopback_tls = loopback_tls
        for name in _QUIET_LOGGERS:
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.WARNING)
        self.api_base_url = api_base_url.rstrip("/") if api_base_url else None
        self.server = server or build_server()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await _json_error(send, 405, "method_not_allowed",
                              "the MCP endpoint takes POST (JSON-RPC 2.0, stateless)", {"Allow": "POST"})
            return
        headers = Headers(scope=scope)
        authorization = headers.get("authorization")
        token = bearer_token(authorization)
        if token is None:
            await _json_error(send, 401, "unauthorized",
                              "missing API key: send 'Authorization: Bearer sk_…'" if not authorization
                              else "the Authorization header must be 'Bearer <API key>'",
                              {"WWW-Authenticate": "Bearer"})
            return
        base_url = self.api_base_url or loopback_base_url(scope, tls=self.loopback_tls is not None)
        refusal, answer_headers = await self._check_key(token, base_url, headers.get("x-chaser-account"))
        if refusal is not None:
            status, code, message = refusal
            await _json_error(send, status, code, message,
                              {**answer_headers, **({"WWW-Authenticate": "Bearer"} if status == 401 else {})})
            return
        if answer_headers:  # e.g. the key's x-ratelimit-* on every answer
            send = _with_headers(send, answer_headers)
        if (headers.get("content-type") or "").split(";")[0].strip().lower() != "application/json":
            # The SDK would answer plain text; every answer of this endpoint is JSON.
            await _json_error(send, 415, "unsupported_media_type",
                              "send the JSON-RPC request with 'Content-Type: application/json'")
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_REQUEST_BODY_BYTES:
            # The API's error shape (the SDK's own limit answers text); the API drains the body (chaser/api/body.py).
            await _json_error(send, 413, "payload_too_large",
                              f"MCP requests are limited to {MAX_REQUEST_BODY_BYTES} bytes")
            return
        scope = {
            **scope,
            "headers": _with_accept(list(scope.get("headers") or [])),
            API_KEY_SCOPE_KEY: token,
            BASE_URL_SCOPE_KEY: base_url,
            # The tools' API calls name the caller's host and scheme: the URLs in their answers are the caller's.
            HEADERS_SCOPE_KEY: {name: value for name, value in (("Host", headers.get("host")),
                                                                ("X-Forwarded-Proto", scope.get("scheme")))
                                if value} if self.api_base_url is None else {},
            TLS_SCOPE_KEY: self.loopback_tls,
            ACCOUNT_SCOPE_KEY: (headers.get("x-chaser-account") or "").strip() or None,
        }
        # Stateless + JSON: a fresh manager per request costs a task group and nothing else, and
        # needs no hook into the host app's lifespan.
        manager = StreamableHTTPSessionManager(self.server, json_response=True, stateless=True,
                                               max_request_body_size=MAX_REQUEST_BODY_BYTES)
        async with manager.run():
            await manager.handle_request(scope, receive, send)

    async def _check_key(self, token: str, base_url: str, account: str | None
                         ) -> tuple[tuple[int, str, str] | None, dict[str, str]]:
        """(refusal or None, headers for the answer). The hook may be async, and may return
        headers to set on the answer (a mapping); a refusal keeps its exception's `headers`."""
        if self.authenticate is not None:
            try:
                result = self.authenticate(token)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:  # duck-typed domain errors: re-raised unless they carry a 4xx status
                status = getattr(exc, "status", None)
                if isinstance(status, int) and 400 <= status < 500:
                    return ((status, str(getattr(exc, "code", "unauthorized")), str(getattr(exc, "message", exc))),
                            dict(getattr(exc, "headers", None) or {}))
                raise
            return None, (dict(result) if isinstance(result, Mapping) else {})
        headers = {"Authorization": f"Bearer {token}"}
        if account:
            headers["X-Chaser-Account"] = account
        try:
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
                response = await client.get("/v1/sessions", headers=headers)
        except httpx.HTTPError as exc:
            return (503, "api_unreachable", f"cannot reach the Chaser API at {base_url}: {exc}"), {}
        if response.status_code == 401:
            try:
                body = response.json()
                return (401, body.get("code", "unauthorized"), body.get("message", "invalid API key")), {}
            except ValueError:
                return (401, "unauthorized", "invalid API key"), {}
        return None, {}  # 200, or 403 (a valid key without sessions.read): the tools' own calls decide
