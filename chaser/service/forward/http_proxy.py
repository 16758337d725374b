"""HTTP over the relay: one relay per request, HTTP/1.1 spoken over it with
`h11`. Request and response bodies are streamed both ways (chunked or sized),
HEAD and 1xx are handled, and the upstream gets `Connection: close`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import h11

from chaser.service.forward.headers import (
    RawHeaders,
    downstream_response_headers,
    header_value,
    upstream_request_headers,
)
from chaser.service.forward.relay import RelayStream, UpstreamError

__all__ = ["ForwardedRequest", "HTTPExchange", "UpstreamResponse", "proxy_http"]


@dataclass
class ForwardedRequest:
    """A client's request to a forwarded port, as the gateway received it."""

    method: str
    target: str  # path (still percent-encoded) and query, as the upstream is to see them
    headers: RawHeaders
    scheme: str  # "http" or "https": X-Forwarded-Proto
    client_host: str | None
    prefix: str  # the URL prefix of this forward, for X-Forwarded-Prefix and redirects
    body: AsyncIterator[bytes] | None = None  # read only when the headers announce a body
    api_origin: bool = True  # path style: served on the API's origin, so the response is sandboxed


class HTTPExchange:
    """One request/response over a fresh relay, driven with h11."""

    def __init__(self, relay: RelayStream) -> None:
        self.relay = relay
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
        self.body_task: asyncio.Task[None] | None = None

    async def _send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            await self.relay.send(data)

    async def start(self, method: str, target: str, headers: list[tuple[str, str]],
                    body: AsyncIterator[bytes] | None, content_length: str | None) -> None:
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

    async def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise UpstreamError(f"the server in the sandbox sent an invalid HTTP response: {exc}") from None
            if event is h11.NEED_DATA:
                if self.body_task is not None and self.body_task.done() and not self.body_task.cancelled():
                    failure = self.body_task.exception()
                    if failure is not None:
                        raise failure
                data = await self.relay.recv()
                self.conn.receive_data(data)  # b"" = EOF
                continue
            return event

    async def response_head(self) -> h11.Response:
        while True:
            event = await self.next_event()
            if isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue and friends: ours to absorb
            if isinstance(event, h11.Response):
                return event
            if isinstance(event, h11.ConnectionClosed):
                raise UpstreamError("the server in the sandbox closed the connection without answering")
            raise UpstreamError(f"unexpected upstream event {getattr(event, '__name__', type(event).__name__)}")

    async def body(self) -> AsyncIterator[bytes]:
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return

    async def request_sent(self) -> None:
        """Until the request body is sent (or failed): it reads the client's side until then."""
        if self.body_task is not None:
            await asyncio.gather(self.body_task, return_exceptions=True)

    async def aclose(self) -> None:
        if self.body_task is not None and not self.body_task.done():
            self.body_task.cancel()
        if self.body_task is not None:
            await asyncio.gather(self.body_task, return_exceptions=True)
        await self.relay.close()


class UpstreamResponse:
    """The upstream's answer once its head is in: status, rewritten headers, and
    the body to stream; `aclose` releases the relay and the session."""

    def __init__(self, exchange: HTTPExchange, status: int, headers: RawHeaders, stack: AsyncExitStack, *,
                 has_body: bool) -> None:
        self.exchange = exchange
        self.status = status
        self.headers = headers
        self.has_body = has_body
        self._stack = stack

    def body(self) -> AsyncIterator[bytes]:
        return self.exchange.body()

    async def request_sent(self) -> None:
        await self.exchange.request_sent()

    async def aclose(self) -> None:
        await self._stack.aclose()


async def proxy_http(relay: RelayStream, request: ForwardedRequest, *, port: int,
                     stack: AsyncExitStack) -> UpstreamResponse:
    """Send `request` over `relay` (to 127.0.0.1:port in the guest); answer once
    the response head is in. `stack` (which holds the relay) is closed when the
    response is done, or here, on failure."""
    try:
        exchange = HTTPExchange(relay)
        stack.push_async_callback(exchange.aclose)
        headers = upstream_request_headers(request.headers, port=port, prefix=request.prefix, scheme=request.scheme,
                                           client_host=request.client_host)
        content_length = header_value(request.headers, "content-length")
        has_body = content_length is not None or header_value(request.headers, "transfer-encoding") is not None
        await exchange.start(request.method, request.target, headers, request.body if has_body else None,
                             content_length)
        head = await exchange.response_head()
        response_headers = downstream_response_headers(head.headers, port=port, prefix=request.prefix,
                                                       api_origin=request.api_origin)
        return UpstreamResponse(exchange, head.status_code, response_headers, stack,
                                has_body=not (request.method == "HEAD" or head.status_code in (204, 304)))
    except BaseException:
        await stack.aclose()
        raise
