"""A session whose VM belongs to this process, and the per-session values fixed at start."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from chaser import errors
from chaser.runtime import EgressPolicy, SandboxVM

PROXY_SCHEMES = ("http", "https", "socks5", "socks5h", "socks4")


def session_not_running(session_id: str, status: str) -> errors.SessionNotRunning:
    return errors.SessionNotRunning(f"session {session_id} is {status}, not running")


@dataclass
class LiveSession:
    """A session whose VM belongs to this process."""

    id: str
    account_id: str
    workspace_id: str | None
    workspace_name: str | None
    ephemeral: bool
    image: str | None
    proxy: str | None
    expires_at: datetime
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    vm: SandboxVM | None = None
    terminating: bool = False
    last_activity: float = field(default_factory=time.time)
    active_requests: int = 0
    image_digest: str = ""
    network: EgressPolicy | None = None  # the effective egress policy (what the VM was given / last set)
    network_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # serialises policy changes
    # The env it was created with: it may hold secrets, so it lives here while the session runs and is
    # never written to the database (the VM got it at /init; a reused workspace session compares it).
    env: dict[str, str] = field(default_factory=dict, repr=False)
    # Paused: vm is None, its state is saved under CHASER_HOME/sessions/<id> (chaser/service/suspend.py).
    paused: bool = False
    saving: bool = False  # a pause or fork is saving its state: a request that fails meanwhile is not a crash

    @property
    def usable(self) -> bool:
        """Running, or paused (the next request wakes it)."""
        return not self.terminating and (self.vm is not None or self.paused)

    def touch(self) -> None:
        self.last_activity = time.time()


def session_hostname(session_id: str) -> str:
    """Every session its own hostname (a fork's too): `sandbox-` and the id's last 6 characters."""
    return "sandbox-" + session_id[-6:]


def proxy_env(proxy: str | None) -> dict[str, str]:
    if not proxy:
        return {}
    no_proxy = "localhost,127.0.0.1,::1"
    return {
        "http_proxy": proxy, "https_proxy": proxy, "all_proxy": proxy, "no_proxy": no_proxy,
        "HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "ALL_PROXY": proxy, "NO_PROXY": no_proxy,
    }


def check_proxy(proxy: str | None) -> str | None:
    if proxy is None or proxy == "":
        return None
    try:
        parts = urlsplit(proxy)
        hostname = parts.hostname
    except ValueError:  # e.g. "http://[": an unclosed IPv6 literal
        hostname = None
    if not hostname or parts.scheme not in PROXY_SCHEMES:
        raise errors.InvalidRequest(f"proxy must be a URL like http://host:port (schemes: {', '.join(PROXY_SCHEMES)})")
    return proxy
