"""E2B sandboxes (docs/e2b.md): what the E2B-compatible surface adds to a session.

An E2B sandbox IS a session (ephemeral, started by `SessionManager.create`); its id is
the session id (`ses_` + hex: no `-`, as the SDK wants). What E2B has and a session has
not is kept here, in memory, while the session lives: the template name it was asked
for, its metadata, the envd access token the ingress checks, and when it started.
Sessions end with the server process, so nothing of it needs to outlive the process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from chaser import errors
from chaser.config import Settings
from chaser.models.network import NetworkPolicyCreate
from chaser.models.sessions import SessionCreate
from chaser.models.status import SessionStatus
from chaser.service.keys import Principal
from chaser.service.live import LiveSession
from chaser.service.records import SessionRecord
from chaser.service.sessions import SessionManager
from chaser.store import SessionRow
from chaser.store.tables import utcnow

DEFAULT_TIMEOUT_S = 300  # the SDK's default sandbox timeout
DEFAULT_TEMPLATE = "base"
DENY_ALL = ("0.0.0.0/0", "::/0")


@dataclass
class E2BSandbox:
    session_id: str
    account_id: str
    template_id: str
    access_token: str
    started_at: datetime
    metadata: dict[str, str] = field(default_factory=dict)


def check_signature(token: str, path: str, operation: str, user: str | None, signature: str,
                    expiration: int | None, now: float) -> bool:
    """The SDK's `/files` URL signature (e2b/sandbox/signature.py): `v1_` + unpadded base64 of
    sha256(`path:operation:user:token[:expiration]`), not past its expiration."""
    if expiration is not None and expiration < now:
        return False
    raw = f"{path}:{operation}:{user or ''}:{token}" + (f":{expiration}" if expiration is not None else "")
    expected = "v1_" + base64.b64encode(hashlib.sha256(raw.encode()).digest()).rstrip(b"=").decode()
    return hmac.compare_digest(expected.encode(), signature.encode())


def network_of(allow_internet_access: bool | None, network: dict[str, Any] | None) -> NetworkPolicyCreate | None:
    """E2B's `allow_internet_access` and `network.allowOut/denyOut` as our egress policy:
    `denyOut` of 0.0.0.0/0 means no internet unless `allowOut` names what is allowed."""
    network = network or {}
    allow = [str(item) for item in network.get("allowOut") or []]
    deny = [str(item) for item in network.get("denyOut") or []]
    deny_all = any(item in DENY_ALL for item in deny)
    deny = [item for item in deny if item not in DENY_ALL]
    internet: bool | None = allow_internet_access
    if deny_all and not allow:
        internet = False
    if internet is None and not allow and not deny:
        return None
    return NetworkPolicyCreate.model_validate({"internet": internet, "allow_out": allow or None,
                                               "deny_out": deny or None})


class E2BSandboxes:
    def __init__(self, sessions: SessionManager, settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings
        self.sandboxes: dict[str, E2BSandbox] = {}

    def image_of(self, template_id: str) -> str | None:
        """`base` → the default image; an alias of `CHASER_E2B_TEMPLATES`; else an OCI reference."""
        aliases = self.settings.e2b_templates
        if template_id in aliases:
            return aliases[template_id]
        if template_id in (DEFAULT_TEMPLATE, ""):
            return None
        return template_id

    async def create(self, principal: Principal, *, template_id: str, timeout_s: int | None,
                     metadata: dict[str, str], env: dict[str, str],
                     network: NetworkPolicyCreate | None) -> tuple[E2BSandbox, SessionRecord]:
        ttl = timeout_s if timeout_s is not None else DEFAULT_TIMEOUT_S
        request = SessionCreate.model_validate({
            "session_type": "sandbox", "ephemeral": True, "image": self.image_of(template_id),
            "env": {"E2B_SANDBOX": "true", **env}, "ttl_seconds": self._ttl(ttl), "network": network})
        row, _started = await self.sessions.create(principal, request)
        sandbox = E2BSandbox(session_id=row.id, account_id=principal.account_id, template_id=template_id,
                             access_token=secrets.token_urlsafe(32), started_at=row.created_at,
                             metadata=dict(metadata))
        self.sandboxes[row.id] = sandbox
        return sandbox, row

    def _ttl(self, seconds: int) -> int:
        limit = self.settings.session_max_lifetime_s
        if not 1 <= seconds <= limit:
            raise errors.InvalidRequest(
                f"timeout must be between 1 and {limit} seconds (CHASER_SESSION_MAX_LIFETIME_S)")
        return seconds

    def get(self, principal: Principal, sandbox_id: str) -> tuple[E2BSandbox, SessionRecord]:
        """The caller's sandbox while its session is active; SessionNotFound (404) otherwise."""
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None or sandbox.account_id != principal.account_id:
            raise errors.SessionNotFound(f"sandbox {sandbox_id} not found")
        row = self.sessions.get(principal, sandbox_id)
        if row.status not in (SessionStatus.STARTING, SessionStatus.RUNNING, SessionStatus.PAUSED):
            self.sandboxes.pop(sandbox_id, None)
            raise errors.SessionNotFound(f"sandbox {sandbox_id} not found")
        return sandbox, row

    def list(self, principal: Principal) -> list[tuple[E2BSandbox, SessionRecord]]:
        found = []
        for sandbox_id in list(self.sandboxes):
            try:
                found.append(self.get(principal, sandbox_id))
            except errors.SessionNotFound:
                continue
        return found

    async def kill(self, principal: Principal, sandbox_id: str) -> None:
        self.get(principal, sandbox_id)
        await self.sessions.terminate(principal, sandbox_id, force=True)
        self.sandboxes.pop(sandbox_id, None)

    def set_timeout(self, principal: Principal, sandbox_id: str, timeout_s: int) -> None:
        """The sandbox ends `timeout_s` from now (the reaper ends it: `max_lifetime`)."""
        self.get(principal, sandbox_id)
        expires = utcnow() + timedelta(seconds=self._ttl(timeout_s))
        live = self.sessions.live.get(sandbox_id)
        if live is not None:
            live.expires_at = expires
        with self.sessions.db.session() as s:
            row = s.get(SessionRow, sandbox_id)
            if row is not None:
                row.expires_at = expires

    async def pause(self, principal: Principal, sandbox_id: str) -> None:
        self.get(principal, sandbox_id)
        await self.sessions.pause(principal, sandbox_id)  # memory and disk saved (docs/pause-and-fork.md)

    async def connect(self, principal: Principal, sandbox_id: str, timeout_s: int | None) -> tuple[
            E2BSandbox, SessionRecord]:
        """A running sandbox (a paused one is resumed); its timeout only grows."""
        sandbox, row = self.get(principal, sandbox_id)
        if row.status == SessionStatus.PAUSED:
            await self.sessions.resume(principal, sandbox_id)
            sandbox, row = self.get(principal, sandbox_id)
        if timeout_s is not None:
            wanted = utcnow() + timedelta(seconds=self._ttl(timeout_s))
            if row.expires_at is None or row.expires_at < wanted:
                self.set_timeout(principal, sandbox_id, timeout_s)
                sandbox, row = self.get(principal, sandbox_id)
        return sandbox, row

    async def metrics(self, principal: Principal, sandbox_id: str) -> dict[str, int | float]:
        """One sample from the guest's /proc and df (CPU use is not measured: 0)."""
        self.get(principal, sandbox_id)
        live = await self.sessions.live_session(principal, sandbox_id)
        async with self.sessions.using(live) as vm:
            result = await vm.exec(["/bin/sh", "-c", "cat /proc/meminfo; df -Pk / | tail -1"], user="root",
                                   timeout_ms=10_000)
        text = base64.b64decode(result.get("output") or "").decode(errors="replace")
        mem = {}
        for line in text.splitlines():
            name, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                mem[name] = int(rest.split()[0]) * 1024
        disk = text.strip().splitlines()[-1].split() if text.strip() else []
        disk_total = int(disk[1]) * 1024 if len(disk) > 3 and disk[1].isdigit() else 0
        disk_used = int(disk[2]) * 1024 if len(disk) > 3 and disk[2].isdigit() else 0
        total = mem.get("MemTotal", self.settings.memory_mib * 1024 * 1024)
        return {"cpuCount": self.settings.vcpus, "cpuUsedPct": 0.0,
                "memTotal": total, "memUsed": total - mem.get("MemAvailable", total),
                "memCache": mem.get("Cached", 0), "diskTotal": disk_total, "diskUsed": disk_used}

    # --- the ingress ---------------------------------------------------------------------
    def token_of(self, sandbox_id: str) -> str | None:
        sandbox = self.sandboxes.get(sandbox_id)
        return sandbox.access_token if sandbox is not None else None

    async def running(self, sandbox_id: str) -> LiveSession:
        """The running session behind an ingress request whose token was checked: SessionNotFound
        when it is gone (a paused one is resumed first)."""
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None:
            raise errors.SessionNotFound(f"sandbox {sandbox_id} was not found")
        owner = Principal(key_id="e2b-access-token", account_id=sandbox.account_id)
        try:
            if self.sessions.get(owner, sandbox_id).status == SessionStatus.PAUSED:
                await self.sessions.resume(owner, sandbox_id)  # E2B's auto-resume: a request wakes it
            return await self.sessions.live_session(owner, sandbox_id)
        except (errors.SessionNotFound, errors.Conflict, errors.VMCrashed):
            self.sandboxes.pop(sandbox_id, None)
            raise errors.SessionNotFound(f"sandbox {sandbox_id} was not found") from None
