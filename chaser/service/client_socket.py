"""What the service needs of a client's WebSocket (PTY, gateway WebSocket, raw
tunnel): answer the upgrade, then exchange messages. The API adapts its
framework's WebSocket to this (`chaser/api/client_socket.py`), so the service
never sees ASGI messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["ClientClosed", "ClientGone", "ClientMessage", "ClientSocket"]


class ClientGone(ConnectionError):
    """Sending failed: the client's connection is gone."""


@dataclass(frozen=True)
class ClientClosed:
    """The client closed its WebSocket (or its connection dropped)."""

    code: int | None = None
    reason: str = ""


# A text frame, a binary frame, or the end.
ClientMessage = str | bytes | ClientClosed


class ClientSocket(Protocol):
    """A client's WebSocket: first `accept` or `deny` the upgrade, then talk."""

    async def accept(self, subprotocol: str | None = None) -> None: ...

    async def deny(self, error: Exception) -> None:
        """Refuse the upgrade (not accepted yet) with `error` as the answer."""
        ...

    async def receive(self) -> ClientMessage:
        """The next message; `ClientClosed` once the client is gone."""
        ...

    async def send(self, message: str | bytes) -> None:
        """A text (str) or binary (bytes) frame; `ClientGone` if the client left."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...
