"""Python client for the Chaser API (httpx). Talks HTTP only.

    from chaser.client import ChaserClient
    with ChaserClient() as client:
        session = client.sessions.create(ephemeral=True)
        print(client.exec.in_session(session["id"], "uname -a")["output"])
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
)
from chaser.client._errors import ChaserAPIError, ChaserClientError, ChaserConnectionError
from chaser.client._sse import ServerSentEvent, decode_output, iter_sse

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
    "decode_output",
    "get_current_session",
    "iter_sse",
    "load_config",
    "resolve_settings",
    "save_config",
    "set_current_session",
    "update_config",
]
