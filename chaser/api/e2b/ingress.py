"""The E2B sandbox ingress (`E2B_SANDBOX_URL`, port `CHASER_E2B_INGRESS_PORT`): a streaming
reverse proxy to a port of a sandbox, envd's 49983 first of all.

The target is named by `E2b-Sandbox-Id` / `E2b-Sandbox-Port` (what the SDK sends when
`E2B_SANDBOX_URL` is set), else by a `{port}-{id}.{domain}` Host. Before anything reaches
a VM the request must carry the sandbox's envd access token (`X-Access-Token`, compared in
constant time) or, for `/files`, the URL signature the SDK computes from it. Then it goes
the way of every forwarded request: the session's agent relay (chaser/service/forward),
bodies streamed both ways, nothing buffered. A sandbox that is gone is a 502
`{"message": "sandbox … was not found"}`, the wording the SDK checks for.
"""

from __future__ import annotations

import hmac
import json
import time
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from chaser import errors
from chaser.api.forward_response import ProxiedResponse
from chaser.service.container import Services
from chaser.service.e2b import E2BSandboxes, check_signature
from chaser.service.forward import ForwardedRequest, UpstreamError, check_port

ENVD_PORT = 49983  # E2B's envd port: the agent serves envd there (chaser/agent/envd)
TOKEN_HEADERS = ("x-access-token", "e2b-traffic-access-token")


def target_of(headers: dict[str, str]) -> tuple[str, int] | None:
    """(sandbox id, port) from the SDK's headers, else from a `{port}-{id}.{domain}` Host."""
    sandbox_id = headers.get("e2b-sandbox-id")
    if sandbox_id:
        port = headers.get("e2b-sandbox-port") or str(ENVD_PORT)
        return sandbox_id, check_port(port)
    host = headers.get("host", "").split(":", 1)[0]
    label = host.split(".", 1)[0]
    port_text, sep, sandbox_id = label.partition("-")
    if sep and port_text.isdigit() and sandbox_id and "." in host:
        return sandbox_id, check_port(port_text)
    return None


def _json(status: int, message: str) -> tuple[int, bytes]:
    return status, json.dumps({"code": status, "message": message}).encode()


class Ingress:
    """The ASGI app of the ingress listener."""

    def __init__(self, services: Services, sandboxes: E2BSandboxes) -> None:
        self.services = services
        self.sandboxes = sandboxes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # nothing to start: the API server's lifespan runs the services
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":  # WebSockets are not served here
            await send({"type": "websocket.close", "code": 1008})
            return
        try:
            await self.proxy(scope, receive, send)
        except errors.ChaserError as exc:
            await self.answer(send, *_json(exc.status, exc.message))

    async def answer(self, send: Send, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def authorized(self, token: str, headers: dict[str, str], scope: Scope) -> bool:
        for name in TOKEN_HEADERS:
            given = headers.get(name)
            if given and hmac.compare_digest(given.encode(), token.encode()):
                return True
        if scope["path"] != "/files":
            return False
        query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode(errors="replace")).items()}
        signature, path = query.get("signature"), query.get("path")
        if not signature or path is None:
            return False
        expiration = query.get("signature_expiration")
        if expiration is not None and not expiration.isdigit():
            return False
        operation = "read" if scope["method"] in ("GET", "HEAD") else "write"
        return check_signature(token, path, operation, query.get("username"), signature,
                               int(expiration) if expiration else None, time.time())

    async def proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        target = target_of(headers)
        if target is None:
            await self.answer(send, *_json(400, "name the sandbox: E2b-Sandbox-Id and E2b-Sandbox-Port headers, "
                                               "or a {port}-{sandbox id}.{domain} Host"))
            return
        sandbox_id, port = target
        token = self.sandboxes.token_of(sandbox_id)
        if token is None:
            await self.answer(send, *_json(502, f"sandbox {sandbox_id} was not found"))
            return
        if not self.authorized(token, headers, scope):
            await self.answer(send, *_json(401, "missing or invalid access token (X-Access-Token)"))
            return
        try:
            live = await self.sandboxes.running(sandbox_id)
        except errors.SessionNotFound:
            await self.answer(send, *_json(502, f"sandbox {sandbox_id} was not found"))
            return
        # A Chaser key never goes into a sandbox; the access token only to envd.
        raw = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"x-api-key"
               and (k.lower() not in (b"x-access-token", b"e2b-traffic-access-token") or port == ENVD_PORT)]
        query = scope.get("query_string", b"").decode("latin-1")
        path = scope.get("raw_path") or scope["path"].encode()
        request = Request(scope, receive)
        forwarded = ForwardedRequest(
            method=scope["method"], target=path.decode("latin-1") + (f"?{query}" if query else ""), headers=raw,
            scheme=scope.get("scheme", "http"), client_host=scope["client"][0] if scope.get("client") else None,
            prefix="", body=request.stream(), api_origin=False)
        try:
            upstream = await self.services.forwarding.http(live, port, forwarded)
        except (errors.PortNotListening, UpstreamError) as exc:
            await self.answer(send, *_json(502, f"sandbox {sandbox_id} is running but its port is not open "
                                                f"({port}: {exc.message})"))
            return
        await ProxiedResponse(upstream)(scope, receive, send)

