"""The gateway's HTTP answer: the upstream's response, streamed."""

from __future__ import annotations

import contextlib

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from chaser.aio import first_to_finish
from chaser.service.forward import UpstreamResponse

__all__ = ["ProxiedResponse"]


class ProxiedResponse(Response):
    """An ASGI response that streams the upstream body and then releases the
    relay and the session (`upstream.aclose`). Stops early if the client leaves."""

    def __init__(self, upstream: UpstreamResponse) -> None:  # no Response.__init__: the headers are raw
        self.upstream = upstream
        self.status_code = upstream.status
        self.raw_headers = upstream.headers
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        upstream = self.upstream

        async def stream() -> None:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if upstream.has_body:
                async for chunk in upstream.body():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def watch_disconnect() -> None:
            with contextlib.suppress(Exception):  # a failing `receive` is as good as gone
                await upstream.request_sent()  # the request body owns `receive` until then
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return

        try:
            await first_to_finish(stream(), watch_disconnect(), name="forward-response")
        finally:
            await upstream.aclose()
