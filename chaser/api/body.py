"""Refusals a client can read: drain the unread request body before an error answer.

A server that answers (413, or any error) before reading the body and then closes
the connection leaves the client still sending: the kernel resets the connection
and the client sees `ConnectionResetError` instead of the answer (chaser-sdk's
urllib transport always sends `Connection: close`, so uvicorn closes right after
the response). So, on an error answer (status ≥ 400) while the request body is
not fully read, `DrainBodyMiddleware` first reads and discards what is left,
chunk by chunk (memory stays flat), up to `max_bytes` in all; then the answer
goes out and the connection stays usable. It does not drain, and instead adds
`Connection: close`, when

- the body is (by `Content-Length`) or turns out to be larger than `max_bytes`:
  past that hard cap the server does not read on, the client may see a reset;
- the client sent `Expect: 100-continue` and nobody asked for the body yet (the
  client then does not send it: no `100 Continue` went out);
- the client stalls for `idle_timeout_s` while the body is drained.

Every size-limited endpoint (uploads, MCP) refuses early and relies on this.
The port-forwarding gateway (`/s/…`) is left alone: it relays request and
response bodies concurrently.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("chaser.api")

SKIP_PREFIXES = ("/s/",)


def _request_facts(scope: Scope) -> tuple[int | None, bool, bool]:
    """(Content-Length or None, has a body at all, Expect: 100-continue)."""
    content_length: int | None = None
    chunked = False
    expect_continue = False
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            try:
                content_length = int(value)
            except ValueError:
                content_length = None
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"expect":
            expect_continue = value.lower().strip() == b"100-continue"
    has_body = chunked or bool(content_length)
    return content_length, has_body, expect_continue


class DrainBodyMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int, idle_timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.idle_timeout_s = idle_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(SKIP_PREFIXES):
            await self.app(scope, receive, send)
            return
        content_length, has_body, expect_continue = _request_facts(scope)
        if not has_body:
            await self.app(scope, receive, send)
            return
        received = 0
        done = False  # the whole body was read, or the client went away
        asked = False  # someone called receive(): a `100 Continue` (if expected) went out

        async def counting_receive() -> Message:
            nonlocal received, done, asked
            asked = True
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if not message.get("more_body", False):
                    done = True
            elif message["type"] == "http.disconnect":
                done = True
            return message

        async def drain() -> bool:
            """Read and discard the rest of the body; True: the connection must be closed instead."""
            if expect_continue and not asked:
                return True
            if content_length is not None and content_length > self.max_bytes:
                return True
            while not done:
                if received > self.max_bytes:
                    return True
                try:
                    await asyncio.wait_for(counting_receive(), self.idle_timeout_s)
                except TimeoutError:
                    return True
            return False

        async def draining_send(message: Message) -> None:
            answered_early = message["type"] == "http.response.start" and message.get("status", 200) >= 400
            if answered_early and not done and await drain():
                log.info("%s %s: answered %s with the request body unread (%d bytes read): closing",
                         scope.get("method"), scope.get("path"), message.get("status"), received)
                headers = [(k, v) for k, v in message.get("headers") or () if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, counting_receive, draining_send)
