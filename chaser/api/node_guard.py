"""A node's door (`chaser node`): it serves API replicas only.

Every request but the probes (`/health`, `/healthz`, `/readyz`) must carry the node token
(`x-chaser-node-token`, CHASER_NODE_TOKEN, compared in constant time); without it: 401
`node_token_required` (a WebSocket: the same, as a denied upgrade). With it, the replica's
`x-forwarded-for` becomes the client address (the audit log's) and `x-forwarded-host` the Host
(links the node builds, host-style forwarding) — from anyone else they would be lies.
The caller's own API key is still checked by the node, against the shared database.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from chaser import errors
from chaser.api.node_proxy import refuse
from chaser.service.node_client import NODE_TOKEN_HEADER

__all__ = ["NodeGuardMiddleware"]

PROBES = frozenset({"/health", "/healthz", "/readyz"})


class NodeGuardMiddleware:
    def __init__(self, app: ASGIApp, *, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in PROBES:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))  # a repeated header: the last (none of these repeats)
        given = headers.get(NODE_TOKEN_HEADER.encode(), b"")
        if not hmac.compare_digest(given, self.token):
            error = errors.NodeTokenRequired("this is a Chaser node: it serves the API replicas, which send its "
                                             "node token (CHASER_NODE_TOKEN); send requests to the API instead")
            await refuse(scope, receive, send, error)
            return
        forwarded_host = headers.get(b"x-forwarded-host")
        forwarded_for = headers.get(b"x-forwarded-for", b"").decode("latin-1").split(",")[0].strip()
        rewritten = [(name, value) for name, value in scope["headers"]
                     if name not in (b"host", NODE_TOKEN_HEADER.encode())]
        rewritten.append((b"host", forwarded_host or headers.get(b"host", b"")))
        client = scope.get("client")
        scope = {**scope, "headers": rewritten,
                 "client": (forwarded_for, client[1] if client else 0) if forwarded_for else client}
        if headers.get(b"x-forwarded-proto") == b"https":
            scope["scheme"] = "wss" if scope["type"] == "websocket" else "https"
        await self.app(scope, receive, send)
