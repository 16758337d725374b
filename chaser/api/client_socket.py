"""The client's WebSocket as the service sees it (`chaser.service.client_socket`):
Starlette's WebSocket behind `accept`/`deny`/`receive`/`send`/`close`.

Every refusal happens *before* the upgrade is accepted, as a plain HTTP
response with the usual `{"code","message"}` JSON body (the ASGI "WebSocket
Denial Response" extension, which uvicorn implements); a server without it gets
a close with code 4000 + the HTTP status (e.g. 4404).
"""

from __future__ import annotations

import logging

from starlette.websockets import WebSocket, WebSocketDisconnect

from chaser import errors
from chaser.api.errors import error_response
from chaser.service.client_socket import ClientClosed, ClientGone, ClientMessage

__all__ = ["StarletteClientSocket", "as_chaser_error", "deny"]

log = logging.getLogger("chaser.api.websocket")


def as_chaser_error(exc: Exception) -> errors.ChaserError:
    if isinstance(exc, errors.ChaserError):
        return exc
    log.exception("unexpected error before a WebSocket upgrade")
    return errors.ChaserError(f"internal error: {type(exc).__name__}")


async def deny(websocket: WebSocket, exc: Exception) -> None:
    """Refuse an upgrade that was not accepted yet: an HTTP error response, or a 4xxx close."""
    error = as_chaser_error(exc)
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        headers = dict(error.headers or {})  # e.g. Retry-After and x-ratelimit-* of a 429
        if error.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        await websocket.send_denial_response(error_response(error.status, error.code, error.message,
                                                            headers or None))
    else:
        await websocket.close(code=4000 + error.status, reason=f"{error.code}: {error.message}"[:120])


class StarletteClientSocket:
    """A `ClientSocket` over a Starlette WebSocket."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket

    async def accept(self, subprotocol: str | None = None) -> None:
        await self.websocket.accept(subprotocol=subprotocol)

    async def deny(self, error: Exception) -> None:
        await deny(self.websocket, error)

    async def receive(self) -> ClientMessage:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return ClientClosed(code=message.get("code"), reason=message.get("reason") or "")
            data: bytes | None = message.get("bytes")
            if data is not None:
                return data
            text: str | None = message.get("text")
            if text is not None:
                return text
            # neither: nothing to pass on

    async def send(self, message: str | bytes) -> None:
        try:
            if isinstance(message, str):
                await self.websocket.send_text(message)
            else:
                await self.websocket.send_bytes(message)
        except WebSocketDisconnect as exc:
            raise ClientGone(f"the client went away ({exc.code})") from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        try:
            await self.websocket.close(code=code, reason=reason)
        except WebSocketDisconnect as exc:
            raise ClientGone(f"the client went away ({exc.code})") from exc
