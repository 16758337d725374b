"""Port forwarding: HTTP and WebSocket reverse proxying and raw TCP tunnels to
`127.0.0.1:<port>` inside a sandbox, all through the agent's `/relay`.

The agent's relay is one WebSocket per TCP connection (binary frames = the TCP
byte stream; it is refused with 502 `port_not_listening` before the upgrade when
nothing accepts on the port). On top of it:

- HTTP: one relay per request; we speak HTTP/1.1 over it with `h11` (request
  and response bodies are streamed both ways, chunked or sized, HEAD and
  1xx handled), `Connection: close` upstream.
- WebSocket: the gateway terminates the client's WebSocket (ASGI gives us no
  raw socket) and opens its own to the upstream over the relay with the
  websockets sans-I/O client; messages are pumped both ways and close codes
  passed on.
- Raw TCP (`/v1/sessions/{id}/tunnel/{port}`): relay frames are piped as is.

Every pump awaits its send before reading more, so a slow reader anywhere
stalls the writer instead of growing buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.responses import Response

from chaser import errors

log = logging.getLogger(__name__)

COOKIE_NAME = "chaser_token"
READ_CHUNK = 64 * 1024
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Handled by the websockets client itself when we open the upstream WebSocket.
WS_HANDSHAKE_HEADERS = frozenset({
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-accept",
    "sec-websocket-protocol",
})


def check_port(port: Any) -> int:
    try:
        value = int(str(port))
    except ValueError:
        raise errors.InvalidRequest("port must be an integer in 1..65535") from None
    if not 1 <= value <= 65535:
        raise errors.InvalidRequest("port must be an integer in 1..65535")
    return value


# --- public ports --------------------------------------------------------------
class PublicPorts:
    """Ports a session opened to unauthenticated gateway requests.

    Kept in memory, per live session: they end with the session (and with the
    server process, which ends every session anyway)."""

    def __init__(self, sessions) -> None:
        self.sessions = sessions
        self._ports: dict[str, set[int]] = {}

    def _prune(self) -> None:
        for session_id in [s for s in self._ports if s not in self.sessions.live]:
            del self._ports[session_id]

    def set(self, session_id: str, port: int, public: bool) -> None:
        self._prune()
        ports = self._ports.setdefault(session_id, set())
        if public:
            ports.add(port)
        else:
            ports.discard(port)
            if not ports:
                self._ports.pop(session_id, None)

    def is_public(self, session_id: str, port: int) -> bool:
        return session_id in self.sessions.live and port in self._ports.get(session_id, ())

    def ports(self, session_id: str) -> list[int]:
        return sorted(self._ports.get(session_id, ())) if session_id in self.sessions.live else []


# --- headers -------------------------------------------------------------------
def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.decode("latin-1").split(",") if t.strip())
    return tokens


def strip_cookie(value: str, name: str = COOKIE_NAME) -> str:
    parts = [p.strip() for p in value.split(";")]
    return "; ".join(p for p in parts if p and p.split("=", 1)[0].strip() != name)


def is_chaser_authorization(value: str) -> bool:
    scheme, _, credentials = value.strip().partition(" ")
    return scheme.lower() == "bearer" and credentials.strip().startswith("sk_")


def upstream_request_headers(
    raw: list[tuple[bytes, bytes]], *, port: int, client_host: str | None, scheme: str, prefix: str,
    websocket: bool = False,
) -> list[tuple[str, str]]:
    """The client's headers as they go upstream: hop-by-hop headers, Host, our
    API key and our cookie removed; X-Forwarded-* added."""
    drop = HOP_BY_HOP | _connection_tokens(raw) | {"host", "content-length"}
    if websocket:
        drop = drop | WS_HANDSHAKE_HEADERS
    out: list[tuple[str, str]] = [("host", f"localhost:{port}")]
    original_host = ""
    forwarded_for = ""
    for name_b, value_b in raw:
        name = name_b.decode("latin-1").lower()
        value = value_b.decode("latin-1")
        if name == "host":
            original_host = value
        if name == "x-forwarded-for":
            forwarded_for = value
            continue
        if name in drop or name.startswith("x-forwarded-"):
            continue
        if name == "authorization" and is_chaser_authorization(value):
            continue
        if name == "cookie":
            value = strip_cookie(value)
            if not value:
                continue
        out.append((name, value))
    if client_host:
        out.append(("x-forwarded-for", f"{forwarded_for}, {client_host}" if forwarded_for else client_host))
    if original_host:
        out.append(("x-forwarded-host", original_host))
    out.append(("x-forwarded-proto", scheme))
    out.append(("x-forwarded-prefix", prefix))
    return out


def downstream_response_headers(raw: list[tuple[bytes, bytes]], *, port: int, prefix: str
                                ) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers for the client: hop-by-hop removed,
    Location/Content-Location rewritten into the forward prefix."""
    drop = HOP_BY_HOP | _connection_tokens(raw)
    out = []
    for name, value in raw:
        lname = name.lower()
        if lname.decode("latin-1") in drop:
            continue
        if lname in (b"location", b"content-location"):
            value = rewrite_location(value.decode("latin-1"), port=port, prefix=prefix).encode("latin-1")
        out.append((lname, value))
    return out


def rewrite_location(value: str, *, port: int, prefix: str) -> str:
    for origin in (f"http://localhost:{port}", f"http://127.0.0.1:{port}", f"http://0.0.0.0:{port}"):
        if value == origin or value.startswith(origin + "/"):
            return prefix + (value[len(origin):] or "/")
    if value.startswith("/") and not value.startswith("//"):
        return prefix + value
    return value


def query_without(query: str, name: str) -> str:
    return urlencode([(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != name])


def cookie_value(cookie_header: str | None, name: str = COOKIE_NAME) -> str | None:
    if not cookie_header:
        return None
    jar = SimpleCookie()
    try:
        jar.load(cookie_header)
    except Exception:  # noqa: BLE001 - a malformed Cookie header is just no cookie
        for part in cookie_header.split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return None
    morsel = jar.get(name)
    return morsel.value if morsel else None


# --- host-style routing ----------------------------------------------------------
_HOST_RE_CACHE: dict[str, re.Pattern[str]] = {}


def host_session(host: str | None, base_domain: str | None) -> str | None:
    """`ses_x.example.com[:port]` with base domain `example.com` → `ses_x`."""
    if not host or not base_domain:
        return None
    domain = base_domain.strip(".").lower()
    pattern = _HOST_RE_CACHE.get(domain)
    if pattern is None:
        pattern = re.compile(r"^([a-z0-9_-]+)\." + re.escape(domain) + r"\.?(?::\d+)?$")
        _HOST_RE_CACHE[domain] = pattern
    match = pattern.match(host.strip().lower())
    return match.group(1) if match else None


class HostRoutingMiddleware:
    """With `base_domain` set, `{id}.{domain}/forward/{port}/…` is served as
    `/s/{id}/forward/{port}/…` (the route sees `scope["chaser_host_style"]`)."""

    def __init__(self, app, base_domain: str | None = None, settings=None) -> None:
        self.app = app
        self.base_domain = base_domain
        self.settings = settings

    async def __call__(self, scope, receive, send) -> None:
        domain = self.base_domain if self.settings is None else self.settings.base_domain
        if scope["type"] in ("http", "websocket") and domain:
            host = None
            for name, value in scope.get("headers", ()):
                if name == b"host":
                    host = value.decode("latin-1")
                    break
            session_id = host_session(host, domain)
            path = scope.get("path", "")
            if session_id and (path == "/forward" or path.startswith("/forward/")):
                new_path = f"/s/{session_id}{path}"
                raw = scope.get("raw_path")
                scope = {**scope, "path": new_path, "chaser_host_style": True, "chaser_original_path": path,
                         "raw_path": (f"/s/{session_id}".encode() + raw) if raw else None}
                if scope["raw_path"] is None:
                    del scope["raw_path"]
        await self.app(scope, receive, send)


# --- the relay -------------------------------------------------------------------
class RelayStream:
    """A TCP byte stream over one agent relay WebSocket."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.eof = False

    async def send(self, data: bytes) -> None:
        if data:
            await self.ws.send(data)

    async def recv(self) -> bytes:
        """The next bytes; b"" once the upstream closed."""
        from websockets.exceptions import ConnectionClosed

        if self.eof:
            return b""
        try:
            message = await self.ws.recv()
        except ConnectionClosed:
            self.eof = True
            return b""
        return message if isinstance(message, bytes) else message.encode()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()


def agent_websocket(vm, path: str, params: dict[str, Any] | None = None):
    """The agent WebSocket for `path` (PTY, relay); compression is off there."""
    return vm.agent.websocket(path, params)


@asynccontextmanager
async def open_relay(vm, port: int) -> AsyncIterator[RelayStream]:
    """A relay to 127.0.0.1:port in the guest; PortNotListening (502) if closed."""
    async with agent_websocket(vm, "/relay", {"port": port}) as ws:
        yield RelayStream(ws)


async def pipe_websocket_to_relay(client, relay: RelayStream) -> None:
    """Raw TCP tunnel: client binary frames ↔ relay bytes, until either side ends."""

    async def up() -> None:
        while True:
            message = await client.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None and message.get("text") is not None:
                data = message["text"].encode()
            if data:
                await relay.send(data)

    async def down() -> None:
        while True:
            data = await relay.recv()
            if not data:
                return
            await client.send_bytes(data)

    tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await relay.close()
        with contextlib.suppress(Exception):
            await client.close(code=1000)


# --- HTTP over the relay -----------------------------------------------------------
class UpstreamError(errors.ChaserError):
    """The forwarded server answered with something that is not HTTP/1.x."""

    code = "bad_gateway"
    status = 502


class HTTPExchange:
    """One request/response over a fresh relay, driven with h11."""

    def __init__(self, relay: RelayStream) -> None:
        import h11

        self.h11 = h11
        self.relay = relay
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
        self.body_task: asyncio.Task | None = None

    async def _send(self, event) -> None:
        data = self.conn.send(event)
        if data:
            await self.relay.send(data)

    async def start(self, method: str, target: str, headers: list[tuple[str, str]],
                    body: AsyncIterator[bytes] | None, content_length: str | None) -> None:
        h11 = self.h11
        headers = list(headers)
        if content_length is not None:
            headers.append(("content-length", content_length))
        elif body is not None:
            headers.append(("transfer-encoding", "chunked"))
        headers.append(("connection", "close"))
        await self._send(h11.Request(method=method, target=target, headers=headers))

        async def send_body() -> None:
            if body is not None:
                async for chunk in body:
                    if chunk:
                        await self._send(h11.Data(data=chunk))
            await self._send(h11.EndOfMessage())

        self.body_task = asyncio.create_task(send_body(), name="forward-request-body")

    async def next_event(self):
        h11 = self.h11
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise UpstreamError(f"the server in the sandbox sent an invalid HTTP response: {exc}") from None
            if event is h11.NEED_DATA:
                if self.body_task is not None and self.body_task.done() and not self.body_task.cancelled():
                    exc = self.body_task.exception()
                    if exc is not None:
                        raise exc
                data = await self.relay.recv()
                self.conn.receive_data(data)  # b"" = EOF
                continue
            return event

    async def response_head(self):
        h11 = self.h11
        while True:
            event = await self.next_event()
            if isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue and friends: ours to absorb
            if isinstance(event, h11.Response):
                return event
            if isinstance(event, h11.ConnectionClosed):
                raise UpstreamError("the server in the sandbox closed the connection without answering")
            raise UpstreamError(f"unexpected upstream event {type(event).__name__}")

    async def body(self) -> AsyncIterator[bytes]:
        h11 = self.h11
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return

    async def aclose(self) -> None:
        if self.body_task is not None and not self.body_task.done():
            self.body_task.cancel()
        if self.body_task is not None:
            await asyncio.gather(self.body_task, return_exceptions=True)
        await self.relay.close()


class ProxiedResponse(Response):
    """An ASGI response that streams the upstream body and then releases the
    relay (and whatever else `stack` holds). Stops early if the client leaves."""

    def __init__(self, exchange: HTTPExchange, status: int, headers: list[tuple[bytes, bytes]],
                 stack: AsyncExitStack, *, head: bool) -> None:  # noqa: D107 - no Response.__init__: raw headers
        self.exchange = exchange
        self.status_code = status
        self.raw_headers = headers
        self.stack = stack
        self.head = head
        self.background = None

    async def __call__(self, scope, receive, send) -> None:
        async def stream() -> None:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if not self.head:
                async for chunk in self.exchange.body():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def watch_disconnect() -> None:
            task = self.exchange.body_task
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)  # it owns `receive` until then
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return

        stream_task = asyncio.create_task(stream())
        watch_task = asyncio.create_task(watch_disconnect())
        try:
            done, _ = await asyncio.wait({stream_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
            if stream_task in done:
                stream_task.result()
        finally:
            for task in (stream_task, watch_task):
                task.cancel()
            await asyncio.gather(stream_task, watch_task, return_exceptions=True)
            await self.stack.aclose()


async def proxy_http(request, vm, port: int, target: str, *, prefix: str, stack: AsyncExitStack) -> ProxiedResponse:
    """Send `request` to 127.0.0.1:port in the guest; answer once the response head is in.

    `stack` is closed when the response is done (or here, on failure)."""
    try:
        relay = await stack.enter_async_context(open_relay(vm, port))
        exchange = HTTPExchange(relay)
        stack.push_async_callback(exchange.aclose)
        headers = upstream_request_headers(
            request.scope.get("headers", []), port=port, prefix=prefix, scheme=request.url.scheme,
            client_host=request.client.host if request.client else None)
        content_length = request.headers.get("content-length")
        has_body = content_length is not None or "transfer-encoding" in request.headers
        body = request.stream() if has_body else None
        await exchange.start(request.method, target, headers, body, content_length)
        head = await exchange.response_head()
        response_headers = downstream_response_headers(head.headers, port=port, prefix=prefix)
        return ProxiedResponse(exchange, head.status_code, response_headers, stack,
                               head=request.method == "HEAD" or head.status_code in (204, 304))
    except BaseException:
        await stack.aclose()
        raise


# --- WebSocket over the relay -----------------------------------------------------
_SENDABLE_CLOSE = set(range(1000, 1004)) | set(range(1007, 1015)) | set(range(3000, 5000))


def sendable_close_code(code: int | None) -> int:
    return code if code in _SENDABLE_CLOSE else 1000


class UpstreamWebSocket:
    """A WebSocket client (websockets sans-I/O) speaking over a relay stream."""

    def __init__(self, relay: RelayStream) -> None:
        self.relay = relay
        self.protocol = None
        self.pending: list = []

    async def flush(self) -> bool:
        """Send what the protocol wants to send; False once it wants the TCP closed."""
        for data in self.protocol.data_to_send():
            if data == b"":
                return False
            await self.relay.send(data)
        return True

    async def handshake(self, port: int, target: str, headers: list[tuple[str, str]],
                        subprotocols: list[str] | None):
        """Returns the upstream's handshake Response; raises UpstreamError if refused."""
        from websockets.client import ClientProtocol
        from websockets.http11 import Response
        from websockets.protocol import State
        from websockets.uri import parse_uri

        self.protocol = ClientProtocol(parse_uri(f"ws://localhost:{port}{target}"),
                                       subprotocols=subprotocols or None, max_size=None)
        request = self.protocol.connect()
        for name, value in headers:
            if name == "host":
                continue
            request.headers[name] = value
        self.protocol.send_request(request)
        await self.flush()
        while True:
            data = await self.relay.recv()
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            events = self.protocol.events_received()
            response = next((e for e in events if isinstance(e, Response)), None)
            if response is not None:
                self.pending = [e for e in events if not isinstance(e, Response)]
                if self.protocol.state is not State.OPEN:
                    raise UpstreamError(
                        f"the server in the sandbox refused the WebSocket upgrade ({response.status_code})")
                return response
            if not data:
                raise UpstreamError("the server in the sandbox closed the connection during the WebSocket handshake")

    async def pump(self, client) -> None:
        """Messages both ways until one side closes; close codes are passed on."""
        from websockets.frames import Opcode
        from websockets.protocol import State

        protocol = self.protocol
        closed_by_client = asyncio.Event()

        async def down() -> None:
            fragments: list[bytes] = []
            opcode = None
            events = self.pending
            self.pending = []
            while True:
                for frame in events:
                    if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                        opcode, fragments = frame.opcode, [frame.data]
                    elif frame.opcode is Opcode.CONT:
                        fragments.append(frame.data)
                    else:
                        continue  # ping/pong handled by the protocol; close below
                    if frame.fin and opcode is not None:
                        payload = b"".join(fragments)
                        fragments = []
                        if opcode is Opcode.TEXT:
                            await client.send_text(payload.decode("utf-8", "replace"))
                        else:
                            await client.send_bytes(payload)
                if not await self.flush() or protocol.state is State.CLOSED:
                    break
                if protocol.close_rcvd is not None and protocol.state is not State.OPEN:
                    break
                data = await self.relay.recv()
                if data:
                    protocol.receive_data(data)
                else:
                    protocol.receive_eof()
                events = protocol.events_received()
                if not data and not events:
                    break
            if not closed_by_client.is_set():
                rcvd = protocol.close_rcvd
                with contextlib.suppress(Exception):
                    await client.close(code=sendable_close_code(rcvd.code if rcvd else 1011),
                                       reason=(rcvd.reason if rcvd else "the upstream connection closed"))

        async def up() -> None:
            while True:
                message = await client.receive()
                if message["type"] == "websocket.disconnect":
                    closed_by_client.set()
                    if protocol.state is State.OPEN:
                        protocol.send_close(sendable_close_code(message.get("code")), message.get("reason") or "")
                        await self.flush()
                    return
                if message.get("text") is not None:
                    protocol.send_text(message["text"].encode())
                elif message.get("bytes") is not None:
                    protocol.send_binary(message["bytes"])
                await self.flush()

        down_task = asyncio.create_task(down())
        up_task = asyncio.create_task(up())
        try:
            done, _ = await asyncio.wait({down_task, up_task}, return_when=asyncio.FIRST_COMPLETED)
            if up_task in done and down_task not in done:
                # give the upstream a moment to answer our close frame
                with contextlib.suppress(asyncio.TimeoutError, Exception):
                    await asyncio.wait_for(asyncio.shield(down_task), 2.0)
        finally:
            for task in (down_task, up_task):
                task.cancel()
            await asyncio.gather(down_task, up_task, return_exceptions=True)
            await self.relay.close()
