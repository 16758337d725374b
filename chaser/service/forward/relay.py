"""The agent's relay: one WebSocket per TCP connection to 127.0.0.1:<port> in
the guest (binary frames = the byte stream; refused with 502
`port_not_listening` before the upgrade when nothing accepts on the port), and
the raw TCP tunnel that pipes a client WebSocket through it as is."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from chaser import errors
from chaser.aio import first_to_finish
from chaser.runtime import SandboxVM
from chaser.runtime.interface import AgentSocket
from chaser.service.client_socket import ClientClosed, ClientSocket

__all__ = ["RelayStream", "UpstreamError", "open_relay", "pipe_client_to_relay"]


class UpstreamError(errors.ChaserError):
    """The forwarded server answered with something that is not HTTP/1.x (or no WebSocket)."""

    code = "bad_gateway"
    status = 502


class RelayStream:
    """A TCP byte stream over one agent relay WebSocket."""

    def __init__(self, ws: AgentSocket) -> None:
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


@asynccontextmanager
async def open_relay(vm: SandboxVM, port: int) -> AsyncIterator[RelayStream]:
    """A relay to 127.0.0.1:port in the guest; PortNotListening (502) if closed."""
    async with vm.relay(port) as ws:
        yield RelayStream(ws)


async def pipe_client_to_relay(client: ClientSocket, relay: RelayStream) -> None:
    """Raw TCP tunnel: client frames ↔ relay bytes, until either side ends; then both are closed."""

    async def up() -> None:
        while True:
            message = await client.receive()
            if isinstance(message, ClientClosed):
                return
            await relay.send(message.encode() if isinstance(message, str) else message)

    async def down() -> None:
        while True:
            data = await relay.recv()
            if not data:
                return
            await client.send(data)

    try:
        with contextlib.suppress(Exception):  # either side failing just ends the tunnel
            await first_to_finish(up(), down(), name="tunnel")
    finally:
        await relay.close()
        with contextlib.suppress(Exception):
            await client.close(code=1000)
