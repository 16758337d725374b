"""The ONE place that turns errors into `{"code", "message"}` bodies.

    ChaserError            → its own status and code
    RequestValidationError → 400 invalid_request (malformed JSON, wrong types, unknown fields, …)
    routing 404 / 405      → not_found / method_not_allowed (`Allow`: every method the path answers);
                             an HTTP request to a WebSocket endpoint → 426 upgrade_required (GET) / 405
    anything else          → 500 internal_error (RequestIdMiddleware, so the header is still set)
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chaser import errors

log = logging.getLogger("chaser.api")

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_HTTP_CODES = {
    400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "payload_too_large", 415: "invalid_request",
}


def error_body(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def describe_validation_error(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        location = ".".join(str(item) for item in error.get("loc", ()) if item != "body")
        message = error.get("msg", "invalid value")
        if error.get("type") == "json_invalid":
            message = "request body is not valid JSON"
        elif error.get("type") == "extra_forbidden":
            message = "unknown field"
        elif error.get("type") == "missing" and not location:
            message = "request body is required"
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts) or "invalid request"


async def _chaser_error(_request: Request, exc: errors.ChaserError) -> JSONResponse:
    headers = dict(exc.headers or {})
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if exc.status >= 500 and not isinstance(exc, errors.FeatureNotImplemented):  # 501: a deliberate answer
        log.warning("%s: %s", exc.code, exc.message)
    return error_response(exc.status, exc.code, exc.message, headers or None)


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(400, "invalid_request", describe_validation_error(exc))


_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def path_methods(request: Request) -> tuple[list[str], bool]:
    """(The methods the HTTP routes at this request's path answer, whether a WebSocket route is there.)

    Starlette's 405 names only the methods of the first route whose path matched; a path
    served by several routes (GET and POST of /v1/sessions are two) must list them all."""
    routes = request.app.router.routes

    def served(**changes: Any) -> bool:
        probe = {**request.scope, **changes}
        return any(route.matches(probe)[0] == Match.FULL for route in routes)

    methods = [method for method in _METHOD_ORDER if served(method=method)]
    return methods, served(type="websocket")


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:
        methods, websocket = path_methods(request)
        if websocket and "GET" not in methods:
            methods.insert(0, "GET")
        headers = {**(headers or {}), "Allow": ", ".join(methods)} if methods else headers
    if exc.status_code == 404 and message == "Not Found":
        methods, websocket = path_methods(request)
        if websocket and not methods:  # plain HTTP to a WebSocket-only endpoint
            if request.method in ("GET", "HEAD"):
                return error_response(426, "upgrade_required", "this endpoint takes a WebSocket upgrade "
                                      "(Connection: Upgrade, Upgrade: websocket)", {"Upgrade": "websocket"})
            return error_response(405, "method_not_allowed", "Method Not Allowed", {"Allow": "GET"})
        message = "no such endpoint"
    return error_response(exc.status_code, code, message, headers)


def install_error_handlers(app: FastAPI) -> None:
    # Starlette types a handler as taking any Exception; each of these is registered for its own class.
    app.add_exception_handler(errors.ChaserError, _chaser_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]


class RequestIdMiddleware:
    """Echo a sane incoming `x-request-id` or make one; set it on every response,
    including the 500 of an unhandled exception."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _REQUEST_ID_PATTERN.match(candidate):
                    request_id = candidate
                break
        request_id = request_id or "req_" + secrets.token_hex(12)
        scope.setdefault("state", {})["request_id"] = request_id
        encoded = request_id.encode()
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", encoded))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error on %s %s (request %s)", scope.get("method"), scope.get("path"), request_id)
            if started:
                raise
            body = json.dumps(error_body("internal_error", f"internal server error (request {request_id})")).encode()
            await send_with_id({"type": "http.response.start", "status": 500, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
