"""Host-style forwarding: with `base_domain` set, `{id}.{domain}/forward/{port}/…`
is served as `/s/{id}/forward/{port}/…` (the route sees `scope["chaser_host_style"]`
and the path the client asked for in `scope["chaser_original_path"]`).

A session's host is an origin of its own for that sandbox's content and serves
nothing else: any other path there (`/v1/…`, `/s/{other}/…`, `/health`) is a 404,
so a page of the sandbox cannot reach the API or another session same-origin."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from chaser import errors
from chaser.api.client_socket import deny
from chaser.api.errors import error_response
from chaser.config import Settings
from chaser.service.forward import host_session

__all__ = ["HostRoutingMiddleware"]

ONLY_FORWARDS = "{host} serves only the session's forwarded ports (/forward/{{port}}/…)"


class HostRoutingMiddleware:
    """Rewrites host-style forward requests to the path-style routes; `settings`
    (read on every request) wins over a fixed `base_domain`."""

    def __init__(self, app: ASGIApp, base_domain: str | None = None, settings: Settings | None = None) -> None:
        self.app = app
        self.base_domain = base_domain
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        domain = self.base_domain if self.settings is None else self.settings.base_domain
        if scope["type"] in ("http", "websocket") and domain:
            host = None
            for name, value in scope.get("headers", ()):
                if name == b"host":
                    host = value.decode("latin-1")
                    break
            session_id = host_session(host, domain)
            path = scope.get("path", "")
            if session_id and not (path == "/forward" or path.startswith("/forward/")):
                error = errors.NotFound(ONLY_FORWARDS.format(host=host))
                if scope["type"] == "http":
                    await error_response(error.status, error.code, error.message)(scope, receive, send)
                else:
                    await deny(WebSocket(scope, receive, send), error)
                return
            if session_id:
                new_path = f"/s/{session_id}{path}"
                raw = scope.get("raw_path")
                scope = {**scope, "path": new_path, "chaser_host_style": True, "chaser_original_path": path,
                         "raw_path": (f"/s/{session_id}".encode() + raw) if raw else None}
                if scope["raw_path"] is None:
                    del scope["raw_path"]
        await self.app(scope, receive, send)
