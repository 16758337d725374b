"""Python client for the Chaser API: HTTP (httpx), and WebSockets for terminals and tunnels.

    from chaser.client import ChaserClient
    with ChaserClient() as client:
        session = client.sessions.create(ephemeral=True)
        print(client.exec.in_session(session["id"], "uname -a")["output"])

The WebSocket transports (asyncio): `connect_pty` (a terminal) and `connect_tunnel` (a TCP
port in the session). `websockets` is imported when one is opened, not with this package.
"""

from chaser.client._client import DEFAULT_TIMEOUT, ChaserClient
from chaser.client._config import (
    DEFAULT_API_URL,
    ClientSettings,
    config_path,
    get_current_session,
    load_config,
    resolve_settings,
    save_config,
    set_current_session,
    update_config,
    write_file_atomically,
)
from chaser.client._errors import ChaserAPIError, ChaserClientError, ChaserConnectionError
from chaser.client._sse import ServerSentEvent, decode_output, iter_sse
from chaser.client._websocket import (
    connect_pty,
    connect_tunnel,
    pty_exec_message,
    pty_resize_message,
    pty_signal_message,
)

__all__ = [
    "DEFAULT_API_URL",
    "DEFAULT_TIMEOUT",
    "ChaserAPIError",
    "ChaserClient",
    "ChaserClientError",
    "ChaserConnectionError",
    "ClientSettings",
    "ServerSentEvent",
    "config_path",
    "connect_pty",
    "connect_tunnel",
    "decode_output",
    "get_current_session",
    "iter_sse",
    "load_config",
    "pty_exec_message",
    "pty_resize_message",
    "pty_signal_message",
    "resolve_settings",
    "save_config",
    "set_current_session",
    "update_config",
    "write_file_atomically",
]
