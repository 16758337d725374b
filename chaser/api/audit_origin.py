"""Every HTTP and WebSocket request runs in an audit origin: the client address
(`scope["client"]`, i.e. what uvicorn saw, after its own `--proxy-headers`
handling) that the audit log records next to the API key that made the call
(chaser/service/audit.py)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from chaser.service.audit import request_origin

__all__ = ["AuditOriginMiddleware"]


class AuditOriginMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        with request_origin(str(client[0]) if client else None):
            await self.app(scope, receive, send)
