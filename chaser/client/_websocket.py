"""WebSocket transports of the client (asyncio, `websockets`): the PTY and raw
TCP tunnels. A refused upgrade becomes the same ChaserAPIError an HTTP call
would raise (the server refuses with a JSON error response before upgrading).

    async with connect_pty(client, session_id, mode="exec") as ws: ...
    async with connect_tunnel(client, session_id, 3000) as ws: ...

Both are public as `chaser.client.connect_pty` and `chaser.client.connect_tunnel`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from chaser.client._errors import ChaserConnectionError, api_error_from_response

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

    from chaser.client._client import ChaserClient

USER_AGENT = "chaser-client/0.1"


@asynccontextmanager
async def connect(client: ChaserClient, path: str, params: Mapping[str, Any] | None = None,
                  *, open_timeout: float = 60.0) -> AsyncIterator[ClientConnection]:
    """An open `websockets` connection to `base_url + path`, authenticated with the client's key."""
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import InvalidHandshake, InvalidStatus

    url = client.ws_url(path, params)
    try:
        connection = await ws_connect(
            url, additional_headers=client.auth_headers(), user_agent_header=USER_AGENT,
            max_size=None, open_timeout=open_timeout, compression=None,
            ping_interval=20, ping_timeout=60, ssl=client.ssl_context() if url.startswith("wss:") else None,
        )
    except InvalidStatus as exc:
        response = exc.response
        raise api_error_from_response(response.status_code, response.headers, bytes(response.body or b"")) from None
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise ChaserConnectionError(f"cannot reach {client.base_url}: {exc or type(exc).__name__}") from exc
    try:
        yield connection
    finally:
        await connection.close()


def pty_params(mode: str = "human", rows: int | None = None, cols: int | None = None) -> dict[str, Any]:
    return {"mode": mode, "rows": rows, "cols": cols}


def connect_pty(client: ChaserClient, session_id: str, *, mode: str = "human", rows: int | None = None,
                cols: int | None = None) -> AbstractAsyncContextManager[ClientConnection]:
    """The session's terminal: binary frames are its bytes both ways, text frames the JSON
    control messages below (`pty_resize_message`, `pty_signal_message`, `pty_exec_message`)."""
    return connect(client, f"/v1/sessions/{quote(session_id, safe='')}/pty", pty_params(mode, rows, cols))


def connect_tunnel(client: ChaserClient, session_id: str, port: int) -> AbstractAsyncContextManager[ClientConnection]:
    """A raw TCP stream to `port` inside the session, as binary frames."""
    return connect(client, f"/v1/sessions/{quote(session_id, safe='')}/tunnel/{int(port)}")


def pty_resize_message(rows: int, cols: int) -> str:
    return json.dumps({"type": "resize", "rows": rows, "cols": cols})


def pty_signal_message(signal: str) -> str:
    return json.dumps({"type": "signal", "signal": signal})


def pty_exec_message(command: str) -> str:
    return json.dumps({"type": "exec", "command": command})
