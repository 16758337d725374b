"""Sessions: one microVM each. The state machine is

    starting ──► running ──► terminated   (user, idle_timeout, max_lifetime, server_shutdown, server_restart)
        │           └──────► failed       (vm_crashed)
        └──────────────────► failed       (the VM did not start: end_reason = the error's code)

Rows live in the store; the VMs of this process live in `SessionManager.live`.
A per-session asyncio lock serialises start and stop; requests that use a VM do
not take it (a long exec must not block a terminate) but run inside `using()`,
which turns a VM stopped under them into 409 `session_not_running`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import delete, select

from chaser import errors
from chaser.config import Settings
from chaser.models.network import NetworkPolicyCreate
from chaser.models.sessions import BulkTerminateCreate, SessionCreate
from chaser.models.workspaces import BulkDeleteWorkspacesCreate, WorkspaceCreate
from chaser.service.images import DEFAULT_IMAGE, ImageService, check_image_ref
from chaser.service.keys import Principal
from chaser.service.network import effective_policy, network_enforced, stored_policy
from chaser.service.workspaces import ACTIVE_STATUSES, WorkspaceManager, copy_disk
from chaser.store import Database, SessionRow, Workspace
from chaser.store.tables import WorkspaceSnapshot, utcnow
from chaser.runtime import EgressPolicy, Runtime, SandboxVM, VMSpec

log = logging.getLogger(__name__)

ENDED_STATUSES = ("terminated", "failed")
PROXY_SCHEMES = ("http", "https", "socks5", "socks5h", "socks4")


def session_not_running(session_id: str, status: str) -> errors.Conflict:
    return errors.Conflict(f"session {session_id} is {status}, not running", code="session_not_running")


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
    vm: object | None = None
    terminating: bool = False
    last_activity: float = field(default_factory=time.time)
    active_requests: int = 0
    image_digest: str = ""
    network: EgressPolicy | None = None  # the effective egress policy (what the VM was given / last set)
    network_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # serialises policy changes

    def touch(self) -> None:
        self.last_activity = time.time()


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


class SessionManager:
    def __init__(self, db: Database, settings: Settings, runtime: Runtime | None, workspaces: WorkspaceManager,
                 images: ImageService | None = None) -> None:
        self.db = db
        self.settings = settings
        self._runtime = runtime
        self.workspaces = workspaces
        self.images = images or ImageService(settings)
        self.live: dict[str, LiveSession] = {}
        self._workspace_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._closing = False

    @property
    def has_runtime(self) -> bool:
        return self._runtime is not None

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise errors.SandboxRuntimeError("the runtime has not started yet")
        return self._runtime

    def attach_runtime(self, runtime: Runtime) -> None:
        """The runtime made at server start-up (chaser/assembly.py)."""
        self._runtime = runtime

    # --- queries -------------------------------------------------------------
    def get(self, principal: Principal, session_id: str) -> SessionRow:
        return self.get_in_account(principal.account_id, session_id)

    def get_in_account(self, account_id: str, session_id: str) -> SessionRow:
        with self.db.session() as s:
            row = s.scalar(select(SessionRow).where(SessionRow.id == session_id, SessionRow.account_id == account_id))
        if row is None:
            raise errors.NotFound(f"no session {session_id!r}", code="session_not_found")
        return row

    def list(self, principal: Principal, *, status: str = "active") -> list[SessionRow]:
        query = select(SessionRow).where(SessionRow.account_id == principal.account_id)
        if status == "active":
            query = query.where(SessionRow.status.in_(ACTIVE_STATUSES))
        elif status != "all":
            query = query.where(SessionRow.status == status)
        with self.db.session() as s:
            return list(s.scalars(query.order_by(SessionRow.created_at)))

    def workspace_name(self, row: SessionRow) -> str | None:
        if row.workspace_id is None:
            return None
        live = self.live.get(row.id)
        if live is not None:
            return live.workspace_name
        with self.db.session() as s:
            workspace = s.get(Workspace, row.workspace_id)
        return (workspace.name or workspace.id) if workspace else None

    # --- create --------------------------------------------------------------
    def resolve_workspace_ref(self, principal: Principal, *, ephemeral: bool, workspace: str | None,
                              image: str | None) -> Workspace | None:
        """The workspace a request targets, per the rules shared by sessions and /v1/exec."""
        if image is not None and workspace is not None:
            raise errors.InvalidRequest("pass either workspace or image, not both: a workspace carries its own image")
        if ephemeral:
            if workspace is not None:
                raise errors.InvalidRequest("an ephemeral session has no workspace; pass one of ephemeral or workspace")
            return None
        if image is not None:
            raise errors.InvalidRequest("image is only accepted with ephemeral: true; set the image on the workspace")
        if workspace is None:
            default = self.settings.default_workspace
            if not default:
                raise errors.WorkspaceRequired("pass a workspace, or ephemeral: true")
            found = self.workspaces.find_in_account(principal.account_id, default)
            if found is None:  # the configured default is created on first use
                try:
                    found = self.workspaces.create_row(account_id=principal.account_id, name=default)
                except errors.Conflict:
                    found = self.workspaces.get_in_account(principal.account_id, default)
            return found
        return self.workspaces.get(principal, workspace)

    async def create(self, principal: Principal, request: SessionCreate) -> tuple[SessionRow, bool]:
        """The session and whether it was started now. A workspace runs at most one session:
        when it has one (running or starting), that session is the answer (`False`), as for
        /v1/exec and MCP; its `network` is applied to it, a different `env` or `proxy` is 409."""
        if request.session_type != "sandbox":
            raise errors.UnsupportedSessionType(
                f"session_type {request.session_type!r} is not supported here; only 'sandbox'")
        if request.github_repo is not None:
            raise errors.InvalidRequest("github_repo is not supported")
        max_lifetime = self.settings.session_max_lifetime_s
        if request.ttl_seconds is not None and not 1 <= request.ttl_seconds <= max_lifetime:
            raise errors.InvalidRequest(f"ttl_seconds must be between 1 and {max_lifetime}")
        proxy = check_proxy(request.proxy)
        workspace = self.resolve_workspace_ref(principal, ephemeral=request.ephemeral,
                                               workspace=request.workspace, image=request.image)
        live, started = await self._start(principal, workspace=workspace, image=request.image, env=request.env or {},
                                          proxy=proxy, ttl_seconds=request.ttl_seconds, network=request.network)
        return self.get(principal, live.id), started

    async def ensure_for_workspace(self, principal: Principal, workspace: Workspace, *,
                                   network: NetworkPolicyCreate | None = None) -> LiveSession:
        """The workspace's running session, started if there is none (for /v1/exec). A `network`
        for a running session is applied to it (fields it omits keep the session's current values)."""
        live, _started = await self._start(principal, workspace=workspace, image=None, env={}, proxy=None,
                                           ttl_seconds=None, network=network)
        return live

    async def create_ephemeral(self, principal: Principal, *, image: str | None,
                               network: NetworkPolicyCreate | None = None) -> LiveSession:
        live, _started = await self._start(principal, workspace=None, image=image, env={}, proxy=None,
                                           ttl_seconds=None, network=network)
        return live

    async def start_warm_pool(self) -> None:
        """Keep VMs of the default image ready, so ephemeral sessions start at once."""
        if self.settings.warm_pool_size <= 0 or not hasattr(self.runtime, "warm_pool"):
            return
        try:
            image = await self.images.resolve(None, runtime=self.runtime)
            self.runtime.warm_pool(image.disk)
        except Exception as exc:  # noqa: BLE001 - sessions still start without the pool
            log.warning("warm pool not started: %s", exc)

    async def _start(self, principal: Principal, *, workspace: Workspace | None, image: str | None,
                     env: dict[str, str], proxy: str | None, ttl_seconds: int | None,
                     network: NetworkPolicyCreate | None = None) -> tuple[LiveSession, bool]:
        """Start a session, or (a workspace that has one) answer its running session: (live, started).
        Never two VMs on one workspace disk."""
        if self._closing:
            raise errors.SandboxRuntimeError("the server is shutting down")
        policy = effective_policy(network, base=workspace.network if workspace is not None else None,
                                  default_internet=self.settings.network_internet_default)
        image_ref = workspace.image if workspace is not None else check_image_ref(image)
        if not (workspace is not None and self._active_for_workspace(workspace) is not None):
            self._admit(principal.account_id)  # before an image is pulled; again in _insert
        resolved = await self.images.resolve(image_ref, runtime=self.runtime)
        now = utcnow()
        session_id = "ses_" + secrets.token_hex(12)
        live = LiveSession(
            id=session_id, account_id=principal.account_id,
            workspace_id=workspace.id if workspace else None,
            workspace_name=(workspace.name or workspace.id) if workspace else None,
            ephemeral=workspace is None, image=image_ref or DEFAULT_IMAGE, proxy=proxy,
            expires_at=now + timedelta(seconds=ttl_seconds or self.settings.session_max_lifetime_s),
            image_digest=resolved.digest, network=policy,
        )
        row = SessionRow(
            id=session_id, account_id=principal.account_id, workspace_id=live.workspace_id,
            session_type="sandbox", status="starting", ephemeral=live.ephemeral, image=live.image,
            env=env, proxy=proxy, created_at=now, expires_at=live.expires_at, last_activity_at=now,
            network=policy.to_dict(),
        )
        await live.lock.acquire()
        try:
            if workspace is not None:
                async with self._workspace_locks[workspace.id]:
                    if self.workspaces.find_in_account(principal.account_id, workspace.id) is None:
                        raise errors.NotFound(f"no workspace {workspace.id!r}", code="workspace_not_found")
                    existing = self._active_for_workspace(workspace)
                    if existing is not None:
                        self._check_reusable(existing, env=env, proxy=proxy)
                        live.lock.release()
                        running = await self._wait_running(existing)
                        if network is not None:  # not silently ignored: applied to the running session
                            await self._change_network(running, network)
                        return running, False
                    self._insert(row, live)
            else:
                self._insert(row, live)
            await self._boot(live, image=resolved, env=env)
            return live, True
        finally:
            if live.lock.locked():
                live.lock.release()

    def _check_reusable(self, existing: LiveSession, *, env: dict[str, str], proxy: str | None) -> None:
        """A create that names a workspace with a session gets that session, unless it asks for what
        only a new VM could give: env and proxy are fixed when a session starts (409, nothing changed)."""
        different = []
        if env:
            with self.db.session() as s:
                row = s.get(SessionRow, existing.id)
            if row is None or dict(row.env or {}) != env:
                different.append("env")
        if proxy is not None and proxy != existing.proxy:
            different.append("proxy")
        if different:
            raise errors.Conflict(
                f"workspace {existing.workspace_name} already has a running session {existing.id} with a different "
                f"{' and '.join(different)} (fixed when a session starts); terminate it first, or omit "
                f"{' and '.join(different)} to use it", code="workspace_busy")

    def _admit(self, account_id: str) -> None:
        """A start of a new VM: the account's quota (429), then the host's capacity (503)."""
        limit = self.settings.max_sessions_per_account
        count = sum(1 for item in self.live.values() if item.account_id == account_id and not item.terminating)
        if count >= limit:
            raise errors.QuotaExceeded(
                f"account {account_id} has {count} live sessions, the limit is {limit} "
                "(CHASER_MAX_SESSIONS_PER_ACCOUNT); terminate one first")
        check_capacity = getattr(self.runtime, "check_capacity", None)
        if check_capacity is not None:
            check_capacity()

    def _insert(self, row: SessionRow, live: LiveSession) -> None:
        """Admit, then record the session: no await in between, so concurrent creates cannot both pass."""
        self._admit(live.account_id)
        with self.db.session() as s:
            s.add(row)
        self.live[live.id] = live

    def _active_for_workspace(self, workspace: Workspace) -> LiveSession | None:
        for live in self.live.values():
            if live.workspace_id == workspace.id and not live.terminating:
                return live
        return None

    async def _wait_running(self, live: LiveSession) -> LiveSession:
        async with live.lock:  # held while it starts
            pass
        if self.live.get(live.id) is not live or live.terminating or live.vm is None:
            raise session_not_running(live.id, "not running")
        return live

    async def _boot(self, live: LiveSession, *, image, env: dict[str, str]) -> None:
        from chaser.runtime.spec import VMSpec

        writable = None
        if live.workspace_id is not None:
            writable = self.workspaces.disk_path(live.workspace_id)
            writable.parent.mkdir(parents=True, exist_ok=True)
        vm_env = {
            **image.config.env,  # the image's Env, under everything the session sets
            **proxy_env(live.proxy),
            "CHASER_MODE": "sandbox",
            "CHASER_WORKSPACE_ROOT": "/workspace",
            "CHASER_WORKSPACE_ID": live.workspace_id or "",
            "CHASER_RUNTIME_ENV": "microvm",
            **env,
        }
        spec = VMSpec(image_disk=image.disk, writable_disk=writable,
                      writable_size_bytes=self.settings.writable_size_bytes,
                      session_id=live.id, env=vm_env, hostname="sandbox",
                      user=image.config.user, workdir=image.config.workdir, network=live.network)
        started = time.monotonic()
        try:
            vm = await self.runtime.start(spec)
        except BaseException as exc:
            self.live.pop(live.id, None)
            if isinstance(exc, errors.CapacityExhausted):  # refused before anything started: no trace
                with self.db.session() as s:
                    s.execute(delete(SessionRow).where(SessionRow.id == live.id))
                raise
            failure = exc if isinstance(exc, errors.ChaserError) else errors.SandboxRuntimeError(
                f"the VM could not start: {type(exc).__name__}: {exc}")
            self._finish_row(live.id, status="failed", reason=failure.code, message=failure.message)
            log.warning("session %s failed to start: %s", live.id, failure.message)
            if isinstance(exc, (errors.ChaserError, asyncio.CancelledError)) or not isinstance(exc, Exception):
                raise
            raise failure from exc
        live.vm = vm
        live.touch()
        with self.db.session() as s:
            row = s.get(SessionRow, live.id)
            row.status = "running"
            row.vm_id = getattr(vm, "id", None)
        log.info("session %s running (vm %s, %s boot, %.2fs)", live.id, getattr(vm, "id", "?"),
                 getattr(vm, "boot_method", "?"), time.monotonic() - started)

    def _finish_row(self, session_id: str, *, status: str, reason: str, message: str | None = None) -> None:
        with self.db.session() as s:
            row = s.get(SessionRow, session_id)
            if row is None or row.status in ENDED_STATUSES:
                return
            row.status = status
            row.end_reason = reason
            row.failure_message = message
            row.ended_at = utcnow()

    async def check_crashed(self, session_id: str) -> None:
        """Record a crash noticed on a read (the reaper would catch it a few seconds later)."""
        live = self.live.get(session_id)
        if live is not None and live.vm is not None and not live.terminating and live.vm.crashed:
            await self._mark_crashed(live)

    # --- use -----------------------------------------------------------------
    async def live_session(self, principal: Principal, session_id: str) -> LiveSession:
        """The running session, or 404 / 409 session_not_running / 503 vm_crashed."""
        row = self.get(principal, session_id)
        live = self.live.get(session_id)
        if live is not None and row.status == "starting":
            await self._wait_running(live)
            row = self.get(principal, session_id)
        if live is None or live.terminating or live.vm is None or row.status != "running":
            raise session_not_running(session_id, row.status if row.status != "running" else "stopping")
        if live.vm.crashed:
            await self._mark_crashed(live)
            raise errors.VMCrashed(live.vm.exit_reason or "the VM stopped unexpectedly")
        live.touch()
        return live

    @asynccontextmanager
    async def using(self, live: LiveSession) -> AsyncIterator[object]:
        """Run a request against the VM; a VM stopped meanwhile becomes a clean error."""
        live.active_requests += 1
        try:
            yield live.vm
        except errors.VMCrashed:
            if live.terminating or self.live.get(live.id) is not live:
                raise session_not_running(live.id, "terminated") from None
            await self._mark_crashed(live)
            raise
        finally:
            live.active_requests -= 1
            live.touch()

    # --- egress policy -------------------------------------------------------
    def network_enforced(self) -> bool:
        return network_enforced(self.settings, self.runtime)

    def get_network(self, principal: Principal, session_id: str) -> EgressPolicy:
        """The session's policy: the VM's while it runs (where this server enforces policies),
        else the one recorded for it (an ended session: the last one)."""
        row = self.get(principal, session_id)
        live = self.live.get(session_id)
        if live is not None and live.vm is not None and not live.terminating:
            current = getattr(live.vm, "network_policy", None) if self.network_enforced() else None
            if isinstance(current, EgressPolicy):
                return current
            if live.network is not None:
                return live.network
        return stored_policy(row.network, default_internet=self.settings.network_internet_default)

    async def set_network(self, principal: Principal, session_id: str, request: NetworkPolicyCreate) -> EgressPolicy:
        """Replace a running session's policy (omitted fields: the default); new connections follow it at once."""
        policy = effective_policy(request, base=None, default_internet=self.settings.network_internet_default,
                                  field="")
        live = await self.live_session(principal, session_id)
        return await self._apply_network(live, policy)

    async def _change_network(self, live: LiveSession, request: NetworkPolicyCreate) -> EgressPolicy:
        """Apply `request` over the running session's current policy (a reused session, /v1/exec)."""
        base = live.network.to_dict() if live.network is not None else None
        policy = effective_policy(request, base=base, default_internet=self.settings.network_internet_default)
        if policy == live.network:
            return policy
        return await self._apply_network(live, policy)

    async def _apply_network(self, live: LiveSession, policy: EgressPolicy) -> EgressPolicy:
        async with live.network_lock:  # the VM's policy and the stored one change in the same order
            async with self.using(live) as vm:
                await vm.set_network_policy(policy)
            live.network = policy
            with self.db.session() as s:
                row = s.get(SessionRow, live.id)
                if row is not None:
                    row.network = policy.to_dict()
        log.info("session %s: egress policy set to %s", live.id, policy.to_dict())
        return policy

    async def _mark_crashed(self, live: LiveSession) -> None:
        reason = getattr(live.vm, "exit_reason", None) or "the VM stopped unexpectedly"
        log.warning("session %s: VM crashed: %s", live.id, reason)
        end_reason = getattr(live.vm, "end_reason", "vm_crashed")  # vm_oom: killed by its memory limit
        await self._stop(live, force=True, status="failed", reason=end_reason, message=reason)

    # --- stop ----------------------------------------------------------------
    async def terminate(self, principal: Principal, session_id: str, *, force: bool = False) -> SessionRow:
        """Idempotent: terminating an ended session answers its current state."""
        row = self.get(principal, session_id)
        live = self.live.get(session_id)
        if live is not None:
            await self._stop(live, force=force, status="terminated", reason="terminated")
        elif row.status in ACTIVE_STATUSES:  # no VM in this process: the row is stale
            self._finish_row(session_id, status="terminated", reason="terminated")
        return self.get(principal, session_id)

    async def _stop(self, live: LiveSession, *, force: bool, status: str, reason: str,
                    message: str | None = None) -> None:
        live.terminating = True
        async with live.lock:
            if self.live.get(live.id) is not live:
                return  # stopped by someone else meanwhile
            vm = live.vm
            # Ephemeral disks are thrown away, so only a workspace's VM needs the slow, flushing stop.
            graceful = not force and not live.ephemeral
            try:
                if vm is not None:
                    await vm.stop(graceful=graceful)
            except Exception:  # noqa: BLE001 - the row must end whatever the VM did
                log.exception("session %s: stopping its VM failed", live.id)
            finally:
                self.live.pop(live.id, None)
                self._finish_row(live.id, status=status, reason=reason, message=message)
        log.info("session %s %s (%s)", live.id, status, reason)

    async def bulk_terminate(self, principal: Principal, request: BulkTerminateCreate
                             ) -> tuple[list[str], list[tuple[str, str, str]]]:
        targets: dict[str, None] = {}
        failed: list[tuple[str, str, str]] = []
        if request.session_type not in (None, "sandbox"):
            return [], []
        for session_id in request.ids or []:
            targets[session_id] = None
        for ref in request.workspaces or []:
            try:
                workspace = self.workspaces.get(principal, ref)
            except errors.ChaserError as exc:
                failed.append((ref, exc.code, exc.message))
                continue
            for live in list(self.live.values()):
                if live.workspace_id == workspace.id and live.account_id == principal.account_id:
                    targets[live.id] = None
        if request.all:
            for row in self.list(principal, status="active"):
                targets[row.id] = None

        async def one(session_id: str):
            try:
                await self.terminate(principal, session_id, force=request.force)
                return session_id, None
            except errors.ChaserError as exc:
                return session_id, exc

        terminated = []
        for session_id, exc in await asyncio.gather(*(one(t) for t in targets)):
            if exc is None:
                terminated.append(session_id)
            else:
                failed.append((session_id, exc.code, exc.message))
        return terminated, failed

    async def _end_workspace_sessions(self, workspace: Workspace, *, force: bool, graceful: bool, reason: str) -> None:
        """The workspace's running session holds its disk: 409 workspace_busy,
        or with `force` it is stopped first (call under the workspace lock)."""
        active = [live for live in self.live.values() if live.workspace_id == workspace.id]
        if active and not force:
            raise errors.Conflict(
                f"workspace {workspace.name or workspace.id} has a running session {active[0].id}; "
                "terminate it first or pass force=true", code="workspace_busy")
        for live in active:
            await self._stop(live, force=not graceful, status="terminated", reason=reason)

    async def delete_workspace(self, principal: Principal, workspace: Workspace, *, force: bool) -> None:
        """Delete a workspace and its disk; its running session blocks this (409) unless `force`."""
        async with self._workspace_locks[workspace.id]:
            await self._end_workspace_sessions(workspace, force=force, graceful=False, reason="workspace_deleted")
            with self.db.session() as s:  # stale rows of an earlier process
                for row in s.scalars(select(SessionRow).where(SessionRow.workspace_id == workspace.id,
                                                              SessionRow.status.in_(ACTIVE_STATUSES))):
                    row.status, row.end_reason, row.ended_at = "terminated", "workspace_deleted", utcnow()
            self.workspaces.delete_row(workspace)
        self._workspace_locks.pop(workspace.id, None)

    async def bulk_delete_workspaces(self, principal: Principal, request: BulkDeleteWorkspacesCreate
                                     ) -> list[tuple[str, str | None]]:
        """(id or the ref given, error message or None) for each workspace targeted."""
        targets: dict[str, None] = {ref: None for ref in request.ids or []}
        if request.all:
            for row in self.workspaces.list(principal):
                targets[row.id] = None
        results: list[tuple[str, str | None]] = []
        resolved: dict[str, Workspace] = {}
        for ref in targets:  # resolved first: the same workspace by name and by id counts once
            try:
                workspace = self.workspaces.get(principal, ref)
            except errors.ChaserError as exc:
                results.append((ref, exc.message))
                continue
            resolved.setdefault(workspace.id, workspace)
        for workspace in resolved.values():
            try:
                await self.delete_workspace(principal, workspace, force=request.force)
                results.append((workspace.id, None))
            except errors.ChaserError as exc:
                results.append((workspace.id, exc.message))
        return results

    # --- workspace disks: clones and snapshots -------------------------------
    def _still_there(self, workspace: Workspace) -> None:
        """Under the workspace lock: a delete that ran while we waited for it wins."""
        if self.workspaces.find_in_account(workspace.account_id, workspace.id) is None:
            raise errors.NotFound(f"no workspace {workspace.id!r}", code="workspace_not_found")

    def rename_live(self, workspace: Workspace) -> None:
        for live in self.live.values():
            if live.workspace_id == workspace.id:
                live.workspace_name = workspace.name or workspace.id

    async def create_workspace(self, principal: Principal, request: WorkspaceCreate) -> Workspace:
        """A new workspace; with `clone_from`, its disk starts as a copy of that workspace's."""
        if request.clone_from is None:
            return self.workspaces.create(principal, request)
        source = self.workspaces.get(principal, request.clone_from)
        async with self._workspace_locks[source.id]:
            self._still_there(source)
            row = self.workspaces.create_row(account_id=principal.account_id, name=request.name,
                                             session_type=request.session_type, image=request.image,
                                             template=bool(request.template), source=source,
                                             network=self.workspaces.network_of(request, source))
            try:
                source_disk = self.workspaces.disk_path(source.id)
                if source_disk.exists():
                    await self._consistent_copy(source, source_disk, self.workspaces.disk_path(row.id))
            except BaseException:
                self.workspaces.delete_row(row)
                raise
        return row

    async def create_snapshot(self, principal: Principal, workspace: Workspace, *,
                              name: str | None) -> WorkspaceSnapshot:
        """Copy the workspace's disk; a running session is frozen (guest `sync`, QMP stop/cont) around it."""
        async with self._workspace_locks[workspace.id]:
            self._still_there(workspace)
            self.workspaces.check_snapshot_name(workspace, name)
            snapshot_id = self.workspaces.new_snapshot_id()
            disk = self.workspaces.disk_path(workspace.id)
            path = self.workspaces.snapshot_path(workspace.id, snapshot_id)
            has_disk = disk.exists()
            try:
                if has_disk:
                    await self._consistent_copy(workspace, disk, path)
                return self.workspaces.add_snapshot_row(workspace, snapshot_id, name=name, has_disk=has_disk)
            except BaseException:
                path.unlink(missing_ok=True)
                raise

    async def restore_snapshot(self, principal: Principal, workspace: Workspace, snapshot_ref: str, *,
                               force: bool) -> WorkspaceSnapshot:
        """Replace the workspace's disk by the snapshot's (atomically). A running session
        holds the disk: 409 workspace_busy, or with `force` it is terminated first."""
        async with self._workspace_locks[workspace.id]:
            self._still_there(workspace)
            snapshot = self.workspaces.get_snapshot(workspace, snapshot_ref)
            await self._end_workspace_sessions(workspace, force=force, graceful=True, reason="snapshot_restored")
            disk = self.workspaces.disk_path(workspace.id)
            if snapshot.has_disk:
                source = self.workspaces.snapshot_path(workspace.id, snapshot.id)
                if not source.exists():
                    raise errors.NotFound(f"the disk file of snapshot {snapshot.id} is missing",
                                          code="snapshot_not_found")
                await asyncio.to_thread(copy_disk, source, disk)
            else:  # taken before the workspace had a disk: the next session starts empty
                disk.unlink(missing_ok=True)
            return self.workspaces.mark_restored(snapshot)

    async def delete_snapshot(self, principal: Principal, workspace: Workspace, snapshot_ref: str
                              ) -> WorkspaceSnapshot:
        async with self._workspace_locks[workspace.id]:
            snapshot = self.workspaces.get_snapshot(workspace, snapshot_ref)
            self.workspaces.delete_snapshot_row(snapshot)
            return snapshot

    async def _consistent_copy(self, workspace: Workspace, src, dst) -> None:
        """Copy a workspace disk (the caller holds the workspace lock, so no session starts).

        With a session running, the copy is made with the VM frozen: `sync` in the
        guest writes its dirty pages to the disk, QMP `stop` pauses the vCPUs and
        drains QEMU's I/O, the copy runs, then `cont`. The copy is what a power cut
        at that instant would leave — with everything synced, a clean ext4 (its
        journal replays on mount). The session's lock is held meanwhile, so a
        terminate waits for `cont`."""
        live = next((item for item in self.live.values() if item.workspace_id == workspace.id), None)
        if live is None:
            await asyncio.to_thread(copy_disk, src, dst)
            return
        crashed: errors.VMCrashed | None = None
        async with live.lock:  # a session still starting is waited for; a stop in progress finishes
            if self.live.get(live.id) is not live or live.vm is None:
                await asyncio.to_thread(copy_disk, src, dst)
                return
            vm = live.vm
            live.active_requests += 1  # not `using()`: its crash handling takes live.lock
            try:
                await self._frozen_copy(live, vm, src, dst)
            except errors.VMCrashed as exc:
                crashed = exc
            finally:
                live.active_requests -= 1
                live.touch()
        if crashed is not None:
            await self._mark_crashed(live)
            raise crashed

    async def _frozen_copy(self, live: LiveSession, vm, src, dst) -> None:
        result = await vm.exec("sync", timeout_ms=120_000)
        if result.get("exit_code") not in (0, None):
            raise errors.SandboxRuntimeError(f"sync in the guest failed (exit code {result.get('exit_code')})")
        qmp = getattr(vm, "qmp", None)
        paused = False
        try:
            if qmp is not None:
                await qmp.execute("stop")
                paused = True
            await asyncio.to_thread(copy_disk, src, dst)
        finally:
            if paused:
                try:
                    await qmp.execute("cont")
                except Exception:  # noqa: BLE001 - a VM that cannot resume is reaped as crashed
                    log.exception("session %s: resuming the VM after a disk copy failed", live.id)

    # --- lifetime ------------------------------------------------------------
    def recover_on_start(self) -> int:
        """Sessions left running by an earlier process cannot be reattached: end them."""
        count = 0
        with self.db.session() as s:
            for row in s.scalars(select(SessionRow).where(SessionRow.status.in_(ACTIVE_STATUSES))):
                if row.id in self.live:
                    continue
                row.status, row.end_reason, row.ended_at = "terminated", "server_restart", utcnow()
                count += 1
        if count:
            log.warning("marked %d sessions of an earlier server process terminated (server_restart)", count)
        return count

    async def reap_once(self) -> list[tuple[str, str]]:
        """One pass of the reaper: crashed VMs, idle sessions, sessions past their lifetime."""
        now = time.time()
        ended: list[tuple[str, str]] = []
        for live in list(self.live.values()):
            if live.vm is None or live.terminating:
                continue
            if live.vm.crashed:
                await self._mark_crashed(live)
                ended.append((live.id, "vm_crashed"))
            elif now >= live.expires_at.timestamp():
                await self._stop(live, force=False, status="terminated", reason="max_lifetime")
                ended.append((live.id, "max_lifetime"))
            elif live.active_requests == 0 and now - live.last_activity >= self.settings.session_idle_timeout_s:
                await self._stop(live, force=False, status="terminated", reason="idle_timeout")
                ended.append((live.id, "idle_timeout"))
        return ended

    async def reaper(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap_once()
            except Exception:  # noqa: BLE001 - the reaper must keep running
                log.exception("session reaper pass failed")

    async def shutdown(self) -> None:
        self._closing = True
        await asyncio.gather(
            *(self._stop(live, force=False, status="terminated", reason="server_shutdown")
              for live in list(self.live.values())),
            return_exceptions=True,
        )
        stop_all = getattr(self.runtime, "stop_all", None)
        if stop_all is not None:
            await stop_all()
