"""`chaser forward [--session S] PORT [LOCAL_PORT] [--open]`: a local TCP port that
leads to a port inside the sandbox.

Listens on 127.0.0.1:LOCAL_PORT (default PORT; 0 = any free port). Every
accepted connection gets its own WebSocket tunnel
(`/v1/sessions/{id}/tunnel/{port}`), so any TCP protocol works, not only HTTP.
Ctrl-C stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import TYPE_CHECKING

import typer

from chaser.aio import first_to_finish
from chaser.cli.commands._common import api_command, fail, make_client, resolve_session

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

    from chaser.client import ChaserClient


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ws: ClientConnection) -> None:
    """Bytes both ways between a local TCP connection and a tunnel WebSocket."""
    from websockets.exceptions import ConnectionClosed

    async def up() -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                # Local half-close: the relay cannot pass it on, so keep the
                # connection until the sandbox side ends it.
                await asyncio.Future()
            await ws.send(data)

    async def down() -> None:
        try:
            async for message in ws:
                writer.write(message if isinstance(message, bytes) else message.encode())
                await writer.drain()
        except ConnectionClosed:
            pass

    with contextlib.suppress(Exception):  # either side failing just ends this connection
        await first_to_finish(up(), down(), name="forward")


async def serve(client: ChaserClient, session_id: str, port: int, local_port: int, *, open_browser: bool,
                ready: asyncio.Event | None = None) -> None:
    from chaser.client import ChaserClientError, connect_tunnel

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with connect_tunnel(client, session_id, port) as ws:
                await pipe(reader, writer, ws)
        except ChaserClientError as exc:
            print(f"warning: {getattr(exc, 'code', 'error')}: {exc.message}", file=sys.stderr, flush=True)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", local_port)
    bound = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{bound}/"
    print(f"Forwarding 127.0.0.1:{bound} -> {session_id} port {port}  ({url}; Ctrl-C to stop)", flush=True)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    if ready is not None:
        ready.set()
    async with server:
        await server.serve_forever()


@api_command
def forward_command(
    port: int = typer.Argument(..., help="Port inside the sandbox (1-65535)."),
    local_port: int | None = typer.Argument(None, help="Local port on 127.0.0.1 (default: PORT; 0: any free port)."),
    session: str | None = typer.Option(None, "--session", "-s", help="Session id (default: the current session)."),
    open_browser: bool = typer.Option(False, "--open", help="Open the local address in a web browser."),
) -> None:
    """Forward a local TCP port to a port inside the sandbox (any TCP protocol)."""
    if not 1 <= port <= 65535:
        fail("invalid_argument", "PORT must be in 1..65535")
    local = port if local_port is None else local_port
    if not 0 <= local <= 65535:
        fail("invalid_argument", "LOCAL_PORT must be in 0..65535")
    session_id = resolve_session(session)
    with make_client() as client:
        info = client.sessions.get(session_id)
        if info.get("status") != "running":
            fail("session_not_running", f"session {session_id} is {info.get('status')}, not running")
        try:
            asyncio.run(serve(client, session_id, port, local, open_browser=open_browser))
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
        except OSError as exc:
            fail("listen_failed", f"cannot listen on 127.0.0.1:{local}: {exc.strerror or exc}")
    raise typer.Exit(0)
