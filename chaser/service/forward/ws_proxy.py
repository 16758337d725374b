"""WebSocket over the relay. The gateway terminates the client's WebSocket (the
server gives us no raw socket) and opens its own to the upstream over the relay
with the websockets sans-I/O client; messages are pumped both ways and close
codes passed on."""

from __future__ import annotations

import asyncio
import contextlib

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import BytesLike, Subprotocol
from websockets.uri import parse_uri

from chaser.aio import first_to_finish
from chaser.service.client_socket import ClientClosed, ClientSocket
from chaser.service.forward.relay import RelayStream, UpstreamError

__all__ = ["CLOSE_GRACE_S", "UpstreamWebSocket", "sendable_close_code"]

_SENDABLE_CLOSE = set(range(1000, 1004)) | set(range(1007, 1015)) | set(range(3000, 5000))
CLOSE_GRACE_S = 2.0  # how long the upstream may take to answer the close frame of a client that left


def sendable_close_code(code: int | None) -> int:
    return code if code is not None and code in _SENDABLE_CLOSE else 1000


class UpstreamWebSocket:
    """A WebSocket client (websockets sans-I/O) speaking over a relay stream."""

    def __init__(self, relay: RelayStream) -> None:
        self.relay = relay
        self._protocol: ClientProtocol | None = None
        self.pending: list[Frame] = []
        self.subprotocol: str | None = None  # what the upstream chose, for the client's handshake

    @property
    def protocol(self) -> ClientProtocol:
        if self._protocol is None:
            raise RuntimeError("the upstream WebSocket handshake has not been made")
        return self._protocol

    async def flush(self) -> bool:
        """Send what the protocol wants to send; False once it wants the TCP closed."""
        for data in self.protocol.data_to_send():
            if data == b"":
                return False
            await self.relay.send(data)
        return True

    async def handshake(self, port: int, target: str, headers: list[tuple[str, str]],
                        subprotocols: list[str] | None) -> Response:
        """Returns the upstream's handshake Response; raises UpstreamError if refused."""
        protocol = self._protocol = ClientProtocol(parse_uri(f"ws://localhost:{port}{target}"),
                                                   subprotocols=[Subprotocol(p) for p in subprotocols or ()] or None,
                                                   max_size=None)
        request = protocol.connect()
        for name, value in headers:
            if name == "host":
                continue
            request.headers[name] = value
        protocol.send_request(request)
        await self.flush()
        while True:
            data = await self.relay.recv()
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            events = protocol.events_received()
            response = next((e for e in events if isinstance(e, Response)), None)
            if response is not None:
                self.pending = [e for e in events if isinstance(e, Frame)]
                if protocol.state is not State.OPEN:
                    raise UpstreamError(
                        f"the server in the sandbox refused the WebSocket upgrade ({response.status_code})")
                self.subprotocol = response.headers.get("Sec-WebSocket-Protocol")
                return response
            if not data:
                raise UpstreamError("the server in the sandbox closed the connection during the WebSocket handshake")

    async def pump(self, client: ClientSocket) -> None:
        """Messages both ways until one side closes; close codes are passed on."""
        protocol = self.protocol
        closed_by_client = asyncio.Event()
        down_finished = asyncio.Event()

        async def down() -> None:
            try:
                await upstream_to_client()
            finally:
                down_finished.set()

        async def upstream_to_client() -> None:
            fragments: list[BytesLike] = []
            opcode: Opcode | None = None
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
                            await client.send(payload.decode("utf-8", "replace"))
                        else:
                            await client.send(payload)
                if not await self.flush() or protocol.state is State.CLOSED:
                    break
                if protocol.close_rcvd is not None and protocol.state is not State.OPEN:
                    break
                data = await self.relay.recv()
                if data:
                    protocol.receive_data(data)
                else:
                    protocol.receive_eof()
                events = [e for e in protocol.events_received() if isinstance(e, Frame)]
                if not data and not events:
                    break
            if not closed_by_client.is_set():
                rcvd = protocol.close_rcvd
                with contextlib.suppress(Exception):
                    await client.close(code=sendable_close_code(rcvd.code if rcvd else 1011),
                                       reason=(rcvd.reason if rcvd else "the upstream connection closed"))

        async def up() -> None:
            try:
                while True:
                    message = await client.receive()
                    if isinstance(message, ClientClosed):
                        closed_by_client.set()
                        if protocol.state is State.OPEN:
                            protocol.send_close(sendable_close_code(message.code), message.reason)
                            await self.flush()
                        return
                    if isinstance(message, str):
                        protocol.send_text(message.encode())
                    else:
                        protocol.send_binary(message)
                    await self.flush()
            finally:
                # give the upstream a moment to answer our close frame (at once if `down` is over)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(down_finished.wait(), CLOSE_GRACE_S)

        try:
            with contextlib.suppress(Exception):  # either side failing just ends the exchange
                await first_to_finish(down(), up(), name="forward-websocket")
        finally:
            await self.relay.close()
