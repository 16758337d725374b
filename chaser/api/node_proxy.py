"""An API replica's request, passed to a node as it came (docs/architecture.md, "Several nodes").

HTTP is streamed both ways (uploads, downloads, SSE); a WebSocket is opened to the node first, so
a node's refusal reaches the client as the same HTTP denial (status and `{"code","message"}`), then
frames are relayed both ways until either side closes. The node gets the client's own headers
(its API key: the node authenticates it against the shared database) and, from the replica only,
`x-chaser-node-token`, `x-forwarded-for` and `x-forwarded-host` (it trusts them with the token:
chaser/api/node_guard.py). A node that cannot be reached is 503 `node_unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httpx
from starlette.types import Message, Receive, Scope, Send

from chaser import errors
from chaser.api.errors import error_response
from chaser.service.node_client import CONNECT_TIMEOUT_S, NODE_TOKEN_HEADER
from chaser.service.placement import NodeTarget

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

log = logging.getLogger("chaser.api.node_proxy")

# Hop-by-hop (RFC 9110 §7.6.1), and what only the replica may say to a node.
DROPPED = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", NODE_TOKEN_HEADER, "x-forwarded-for", "x-forwarded-host",
    "x-forwarded-proto",
})
WS_HANDSHAKE = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                          "sec-websocket-protocol", "sec-websocket-accept"})
# Close codes a peer never sends (RFC 6455 §7.4.1): what the client gets instead.
RESERVED_CLOSE_CODES = {1005: 1000, 1006: 1011, 1015: 1011}


def node_headers(scope: Scope, token: str, *, websocket: bool = False) -> list[tuple[str, str]]:
    """The client's headers for the node, and the replica's own."""
    dropped = DROPPED | WS_HANDSHAKE if websocket else DROPPED
    headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope.get("headers", ())
               if name.decode("latin-1").lower() not in dropped]
    host = next((value.decode("latin-1") for name, value in scope.get("headers", ()) if name == b"host"), "")
    client = scope.get("client")
    headers += [(NODE_TOKEN_HEADER, token), ("x-forwarded-host", host),
                ("x-forwarded-for", str(client[0]) if client else ""),
                ("x-forwarded-proto", "https" if scope.get("scheme") in ("https", "wss") else "http")]
    return headers


def node_path(scope: Scope) -> str:
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string") or b""
    return raw.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")


class NodeProxy:
    """One replica's connections to the nodes."""

    def __init__(self, token: str, *, verify: ssl.SSLContext | bool = True) -> None:
        self.token = token
        self.verify = verify
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT_S), verify=self.verify,
                                        trust_env=False, follow_redirects=False,
                                        limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))

    async def close(self) -> None:
        await self.client.aclose()

    # --- HTTP -------------------------------------------------------------------------------------
    async def http(self, scope: Scope, receive: Receive, send: Send, node: NodeTarget, *,
                   body: bytes | None = None) -> None:
        """Forward one HTTP request; `body`: already read by the router (else streamed from `receive`)."""

        async def request_body() -> AsyncIterator[bytes]:
            if body is not None:
                yield body
                return
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    return

        headers = node_headers(scope, self.token)
        if body is not None:
            headers = [(name, value) for name, value in headers if name.lower() != "content-length"]
            headers.append(("content-length", str(len(body))))
        request = self.client.build_request(scope["method"], node.url + node_path(scope), headers=headers,
                                            content=request_body())
        try:
            response = await self.client.send(request, stream=True)
        except ClientGone:
            return
        except httpx.HTTPError as exc:
            log.warning("node %s (%s) unreachable: %r", node.id, node.url, exc)
            error = errors.NodeUnavailable(f"the session's node {node.id} does not answer: {type(exc).__name__}")
            await error_response(error.status, error.code, error.message)(scope, receive, send)
            return
        try:
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": [(name.encode("latin-1"), value.encode("latin-1"))
                                    for name, value in response.headers.multi_items()
                                    if name.lower() not in DROPPED]})
            await relay_body(response, receive, send)
        finally:
            await response.aclose()

    async def buffered(self, scope: Scope, node: NodeTarget, body: bytes) -> httpx.Response:
        """One request with its body in hand, its answer read whole (a fan-out to every node)."""
        headers = [(name, value) for name, value in node_headers(scope, self.token) if name.lower() != "content-length"]
        try:
            response = await self.client.request(scope["method"], node.url + node_path(scope), headers=headers,
                                                 content=body)
        except httpx.HTTPError as exc:
            raise errors.NodeUnavailable(f"node {node.id} does not answer: {type(exc).__name__}") from exc
        return response

    # --- WebSocket --------------------------------------------------------------------------------
    async def websocket(self, scope: Scope, receive: Receive, send: Send, node: NodeTarget) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus

        first = await receive()
        if first["type"] != "websocket.connect":
            return
        url = ("wss" if node.url.startswith("https") else "ws") + node.url[node.url.index(":"):] + node_path(scope)
        try:
            upstream = await connect(url, additional_headers=node_headers(scope, self.token, websocket=True),
                                     subprotocols=scope.get("subprotocols") or None, max_size=None,
                                     compression=None, open_timeout=CONNECT_TIMEOUT_S, ping_interval=None,
                                     proxy=None, ssl=self.verify if url.startswith("wss") else None)
        except InvalidStatus as exc:  # the node refused the upgrade: the client gets the same answer
            await deny_as(scope, send, exc.response.status_code, list(exc.response.headers.raw_items()),
                          bytes(exc.response.body or b""))
            return
        except (OSError, TimeoutError) as exc:
            log.warning("node %s (%s) unreachable: %r", node.id, node.url, exc)
            error = errors.NodeUnavailable(f"the session's node {node.id} does not answer: {type(exc).__name__}")
            await deny_as(scope, send, error.status, [("content-type", "application/json")],
                          bytes(error_response(error.status, error.code, error.message).body))
            return
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
        await relay_frames(upstream, receive, send)


async def refuse(scope: Scope, receive: Receive, send: Send, error: errors.ChaserError) -> None:
    """An error answered by the router itself: JSON, or a denied WebSocket upgrade."""
    if scope["type"] == "websocket":
        from starlette.websockets import WebSocket

        from chaser.api.client_socket import deny

        await deny(WebSocket(scope, receive, send), error)
    else:
        await error_response(error.status, error.code, error.message, getattr(error, "headers", None))(
            scope, receive, send)


class ClientGone(Exception):
    """The client went away while its request body was being forwarded."""


async def relay_body(response: httpx.Response, receive: Receive, send: Send) -> None:
    """The node's response body to the client, until it ends or the client goes (an SSE stream)."""

    async def pump() -> None:
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def client_gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    streaming = asyncio.create_task(pump())
    watching = asyncio.create_task(client_gone())
    try:
        done, _pending = await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
        if streaming in done:
            try:
                streaming.result()
            except httpx.HTTPError as exc:  # the node went away mid-body: the client sees it cut
                log.warning("a node's response ended early: %r", exc)
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        for task in (streaming, watching):
            task.cancel()
        await asyncio.gather(streaming, watching, return_exceptions=True)


async def deny_as(scope: Scope, send: Send, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    """Refuse the client's upgrade with the node's answer (or a 4xxx close without the extension)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        kept = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers
                if name.lower() not in DROPPED | {"content-length"}]
        await send({"type": "websocket.http.response.start", "status": status, "headers": kept})
        await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
    else:
        await send({"type": "websocket.close", "code": 4000 + status, "reason": ""})


async def relay_frames(upstream: ClientConnection, receive: Receive, send: Send) -> None:
    from websockets.exceptions import ConnectionClosed

    async def to_node() -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "websocket.disconnect":
                await upstream.close(code=message.get("code", 1000))
                return
            if message.get("bytes") is not None:
                await upstream.send(message["bytes"])
            elif message.get("text") is not None:
                await upstream.send(message["text"])

    async def to_client() -> None:
        try:
            async for frame in upstream:
                if isinstance(frame, bytes):
                    await send({"type": "websocket.send", "bytes": frame})
                else:
                    await send({"type": "websocket.send", "text": frame})
        except ConnectionClosed:
            pass
        code = upstream.close_code or 1000
        with contextlib.suppress(Exception):  # the client may have gone first
            await send({"type": "websocket.close", "code": RESERVED_CLOSE_CODES.get(code, code),
                        "reason": upstream.close_reason or ""})

    tasks = [asyncio.create_task(to_node()), asyncio.create_task(to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await upstream.close()
