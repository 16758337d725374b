"""envd: the E2B sandbox API (docs/e2b.md), served by the agent itself.

It has no TCP listener: the agent's `/relay?port=49983` (ENVD_PORT) hands each relayed
connection to this aiohttp application over a socket pair, so envd is reached only
through the host (with the agent's token, after the host's ingress checked the
sandbox's access token), never from a process inside the sandbox.

Routes: `process.Process/*` (process.py), `filesystem.Filesystem/*` (filesystem.py),
`GET /health`, `GET/POST /files` (files.py). What E2B's SDK assumes of the guest: a
default user `user` with home `/home/user` (added to the sandbox's passwd on first use
when the image lacks it), relative paths resolved against the user's home, commands as
`/bin/bash -l -c`.
"""

import asyncio
import atexit
import base64
import binascii
import posixpath
import socket
import weakref

from aiohttp import web

from ..safepath import normalize
from .connect import RpcError

ENVD_PORT = 49983  # E2B's envd port; the host's ingress relays to it (chaser/api/e2b/ingress.py)
ENVD_VERSION = "0.5.7"
DEFAULT_USER = "user"

_servers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class Envd:
    """envd's state in one agent: processes by pid, watchers."""

    def __init__(self, agent):
        self.agent = agent
        self.processes: dict = {}  # pid -> process.EnvdProcess
        self.watchers: dict = {}  # id -> filesystem.Watcher
        self.user_checked = False
        # The agent kills its own processes when it ends (SIGTERM): envd's too, as it exits.
        atexit.register(self.kill_all)

    def kill_all(self) -> None:
        for p in list(self.processes.values()):
            p.signal(9)

    def user(self, request):
        """The user a request acts as: `Authorization: Basic base64(name:)`, else `user`
        (the image's root when it has no such user and cannot get one: dev mode)."""
        name = None
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                name = base64.b64decode(header[6:], validate=True).decode().split(":", 1)[0] or None
            except (binascii.Error, ValueError):
                raise RpcError("unauthenticated", "malformed Basic authorization") from None
        name = name or request.query.get("username") or None
        if name is None:
            self.ensure_default_user()
            name = DEFAULT_USER
            try:
                return self.agent.user(name)
            except Exception:  # noqa: BLE001 - no `user` (dev mode): the agent's default
                return self.agent.user()
        try:
            return self.agent.user(name)
        except Exception as e:
            raise RpcError("invalid_argument", f"unknown user {name!r}") from e

    def ensure_default_user(self) -> None:
        if self.user_checked:
            return
        self.user_checked = True
        if not self.agent.dev_mode:
            from .users import add_user
            add_user(self.agent.root, DEFAULT_USER)

    def path(self, path, user) -> str:
        """An absolute sandbox path: a relative one is resolved against the user's home."""
        if not isinstance(path, str) or not path:
            raise RpcError("invalid_argument", "path is required")
        if path == "~" or path.startswith("~/"):
            path = user.home + path[1:]
        if not path.startswith("/"):
            path = posixpath.join(user.home or "/", path)
        return normalize(path)


async def _server(agent):
    server = _servers.get(agent)
    if server is None:
        from .app import make_app
        runner = web.AppRunner(make_app(Envd(agent)), access_log=None)
        await runner.setup()
        server = _servers.setdefault(agent, runner.server)
    return server


async def open_connection(agent):
    """A (reader, writer) pair connected to envd, for the relay."""
    server = await _server(agent)
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    try:
        await loop.connect_accepted_socket(server, theirs)
    except BaseException:
        ours.close()
        theirs.close()
        raise
    return await asyncio.open_connection(sock=ours)


# The relay imports this module before the agent first answers (server.WARM_MODULES), so the
# template snapshot already holds envd's modules: a restored clone's first E2B call imports nothing.
from . import app as _app  # noqa: E402, F401
