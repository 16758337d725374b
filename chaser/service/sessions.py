"""Sessions: one microVM each. The state machine is

    starting ──► running ──► terminated   (user, idle_timeout, max_lifetime, server_shutdown, server_restart)
        │           └──────► failed       (vm_crashed)
        └──────────────────► failed       (the VM did not start: end_reason = the error's code)

Around it: live.py (a running session), disks.py (workspace disks under their
sessions), session_network.py (egress policy), reaper.py (what ends sessions
nobody ends). Kept as one module because its start, use and stop paths share
one lock discipline that reads best in one place.

Rows live in the store; the VMs of this process live in `SessionManager.live`.
A per-session asyncio lock serialises start and stop; requests that use a VM do
not take it (a long exec must not block a terminate) but run inside `using()`,
which turns a VM stopped under them into 409 `session_not_running`.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from sqlalchemy import delete, select

from chaser import errors
from chaser.config import Settings
from chaser.images import ResolvedImage
from chaser.models.network import NetworkPolicyCreate
from chaser.models.sessions import BulkTerminateCreate, SessionCreate
from chaser.models.status import ACTIVE_STATUSES, ENDED_STATUSES, EndReason, SessionStatus
from chaser.runtime import EgressPolicy, Runtime, SandboxVM, VMSpec
from chaser.service import audit
from chaser.service.images import DEFAULT_IMAGE, ImageService, check_image_ref
from chaser.service.keys import Principal
from chaser.service.live import LiveSession, check_proxy, proxy_env, session_hostname, session_not_running
from chaser.service.network import effective_policy
from chaser.service.nodes import NodeRegistry
from chaser.service.records import SessionRecord, WorkspaceRecord
from chaser.service.session_network import SessionNetworks
from chaser.service.suspend import Suspender
from chaser.service.workspaces import WorkspaceManager
from chaser.store import Database, SessionRow, Workspace
from chaser.store.claims import WorkspaceElsewhere, WorkspaceGone, claim_workspace
from chaser.store.tables import utcnow

log = logging.getLogger(__name__)
# Ends nobody asked for: the audit log names the server as their actor, not the request that noticed them.
SYSTEM_END_REASONS = frozenset({EndReason.IDLE_TIMEOUT, EndReason.MAX_LIFETIME, EndReason.SERVER_SHUTDOWN,
                                EndReason.SERVER_RESTART, EndReason.VM_CRASHED, EndReason.VM_OOM,
                                EndReason.NODE_LOST})


class SessionManager:
    def __init__(self, db: Database, settings: Settings, runtime: Runtime | None, workspaces: WorkspaceManager,
                 images: ImageService | None = None, *, nodes: NodeRegistry) -> None:
        self.db = db
        self.nodes = nodes  # this process's node: its sessions carry its id
        self.settings = settings
        self._runtime = runtime
        self.workspaces = workspaces
        self.audit = workspaces.audit
        self.images = images or ImageService(settings)
        self.live: dict[str, LiveSession] = {}
        self._workspace_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._closing = False
        self.network = SessionNetworks(self)
        self.suspender = Suspender(self)

    def workspace_lock(self, workspace_id: str) -> asyncio.Lock:
        """Held while a session starts on the workspace's disk or the disk is copied, replaced or deleted."""
        return self._workspace_locks[workspace_id]

    def forget_workspace_lock(self, workspace_id: str) -> None:
        self._workspace_locks.pop(workspace_id, None)

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
    def get(self, principal: Principal, session_id: str) -> SessionRecord:
        return self.get_in_account(principal.account_id, session_id)

    def get_in_account(self, account_id: str, session_id: str) -> SessionRecord:
        with self.db.session() as s:
            row = s.scalar(select(SessionRow).where(SessionRow.id == session_id, SessionRow.account_id == account_id))
        if row is None:
            raise errors.SessionNotFound(f"no session {session_id!r}")
        return SessionRecord.of(row)

    def list(self, principal: Principal, *, status: str = "active") -> list[SessionRecord]:
        query = select(SessionRow).where(SessionRow.account_id == principal.account_id)
        if status == "active":
            query = query.where(SessionRow.status.in_(ACTIVE_STATUSES))
        elif status != "all":
            query = query.where(SessionRow.status == status)
        with self.db.session() as s:
            return [SessionRecord.of(row) for row in s.scalars(query.order_by(SessionRow.created_at))]

    def workspace_name(self, row: SessionRecord) -> str | None:
        if row.workspace_id is None:
            return None
        live = self.live.get(row.id)
        if live is not None:
            return live.workspace_name
        with self.db.session() as s:
            workspace = s.get(Workspace, row.workspace_id)
        return (workspace.name or workspace.id) if workspace else None

    # --- create --------------------------------------------------------------
    async def create(self, principal: Principal, request: SessionCreate) -> tuple[SessionRecord, bool]:
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
        workspace = self.workspaces.resolve_ref(principal, ephemeral=request.ephemeral,
                                               workspace=request.workspace, image=request.image)
        live, started = await self._start(principal, workspace=workspace, image=request.image, env=request.env or {},
                                          proxy=proxy, ttl_seconds=request.ttl_seconds, network=request.network)
        return self.get(principal, live.id), started

    async def ensure_for_workspace(self, principal: Principal, workspace: WorkspaceRecord, *,
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
        if self.settings.warm_pool_size == 0:  # unset: the runtime sizes it
            return
        try:
            image = await self.images.resolve(None, runtime=self.runtime)
            self.runtime.warm_pool(image.disk)
        except Exception as exc:  # noqa: BLE001 - sessions still start without the pool
            log.warning("warm pool not started: %s", exc)

    async def _start(self, principal: Principal, *, workspace: WorkspaceRecord | None, image: str | None,
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
        live, row = self.new_live(principal, workspace=workspace, image_ref=image_ref, image_digest=resolved.digest,
                                  env=env, proxy=proxy, policy=policy, ttl_seconds=ttl_seconds)
        await live.lock.acquire()
        try:
            if workspace is not None:
                async with self.workspace_lock(workspace.id):
                    if self.workspaces.find_in_account(principal.account_id, workspace.id) is None:
                        raise errors.WorkspaceNotFound(f"no workspace {workspace.id!r}")
                    existing = self._active_for_workspace(workspace)
                    if existing is not None:
                        self._check_reusable(existing, env=env, proxy=proxy)
                        live.lock.release()
                        await self.suspender.wake(existing, principal=principal)  # a paused one resumes
                        running = await self._wait_running(existing)
                        if network is not None:  # not silently ignored: applied to the running session
                            await self.network.change(running, network)
                        return running, False
                    self.insert(row, live)
            else:
                self.insert(row, live)
            await self._boot(live, image=resolved, env=env, principal=principal)
            return live, True
        finally:
            if live.lock.locked():
                live.lock.release()

    def new_live(self, principal: Principal, *, workspace: WorkspaceRecord | None, image_ref: str | None,
                 image_digest: str, env: dict[str, str], proxy: str | None, policy: EgressPolicy | None,
                 ttl_seconds: int | None) -> tuple[LiveSession, SessionRow]:
        """A new session's in-memory state and its row (status starting), neither recorded yet."""
        now = utcnow()
        session_id = "ses_" + secrets.token_hex(12)
        live = LiveSession(
            id=session_id, account_id=principal.account_id,
            workspace_id=workspace.id if workspace else None,
            workspace_name=(workspace.name or workspace.id) if workspace else None,
            ephemeral=workspace is None, image=image_ref or DEFAULT_IMAGE, proxy=proxy,
            expires_at=now + timedelta(seconds=ttl_seconds or self.settings.session_max_lifetime_s),
            image_digest=image_digest, network=policy, env=dict(env),
        )
        row = SessionRow(
            id=session_id, account_id=principal.account_id, workspace_id=live.workspace_id,
            session_type="sandbox", status=SessionStatus.STARTING, ephemeral=live.ephemeral, image=live.image,
            env={},  # in memory only (LiveSession.env): a session's env is never stored
            proxy=proxy, created_at=now, expires_at=live.expires_at, last_activity_at=now,
            network=policy.to_dict() if policy is not None else None, node_id=self.nodes.id,
        )
        return live, row

    def _check_reusable(self, existing: LiveSession, *, env: dict[str, str], proxy: str | None) -> None:
        """A create that names a workspace with a session gets that session, unless it asks for what
        only a new VM could give: env and proxy are fixed when a session starts (409, nothing changed)."""
        different = []
        if env and existing.env != env:
            different.append("env")
        if proxy is not None and proxy != existing.proxy:
            different.append("proxy")
        if different:
            raise errors.WorkspaceBusy(
                f"workspace {existing.workspace_name} already has a running session {existing.id} with a different "
                f"{' and '.join(different)} (fixed when a session starts); terminate it first, or omit "
                f"{' and '.join(different)} to use it")

    def _admit(self, account_id: str) -> None:
        """A new session: not on a cordoned node (503), the account's quota (429), the host's capacity (503)."""
        self.nodes.check_accepting()
        self.admit_many(account_id, 1)

    def admit_many(self, account_id: str, count: int) -> None:
        """`count` new VMs (a fork): a paused session holds no VM and counts for nothing here."""
        limit = self.settings.max_sessions_per_account
        live = sum(1 for item in self.live.values()
                   if item.account_id == account_id and not item.terminating and not item.paused)
        if live + count > limit:
            raise errors.QuotaExceeded(
                f"account {account_id} has {live} live sessions and asked for {count} more, the limit is {limit} "
                "(CHASER_MAX_SESSIONS_PER_ACCOUNT); terminate one first")
        self.runtime.check_capacity()

    def insert(self, row: SessionRow, live: LiveSession) -> None:
        """Admit, then record the session: no await in between, so concurrent creates cannot both pass.
        A workspace's session is claimed in the database: another server sharing it may hold one."""
        self._admit(live.account_id)
        with self.db.session() as s:
            if row.workspace_id is None:
                s.add(row)
            else:
                try:
                    holder = claim_workspace(s, row, active=ACTIVE_STATUSES, known=self.live, node_id=self.nodes.id)
                except WorkspaceGone:
                    raise errors.WorkspaceNotFound(f"no workspace {row.workspace_id!r}") from None
                except WorkspaceElsewhere as elsewhere:
                    name = live.workspace_name or row.workspace_id
                    raise errors.WorkspaceElsewhere(f"workspace {name}'s disk is on node {elsewhere.args[0]}, "
                                                    f"not this one ({self.nodes.id})") from None
                if holder is not None:
                    raise errors.WorkspaceBusy(f"workspace {live.workspace_name} has an active session {holder} "
                                               "on another server sharing this database")
        self.live[live.id] = live

    def _active_for_workspace(self, workspace: WorkspaceRecord) -> LiveSession | None:
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

    async def _boot(self, live: LiveSession, *, image: ResolvedImage, env: dict[str, str],
                    principal: Principal | None = None) -> None:
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
                      session_id=live.id, env=vm_env, hostname=session_hostname(live.id),
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
            self.finish_row(live.id, status=SessionStatus.FAILED, reason=failure.code, message=failure.message)
            log.warning("session %s failed to start: %s", live.id, failure.message)
            if isinstance(exc, (errors.ChaserError, asyncio.CancelledError)) or not isinstance(exc, Exception):
                raise
            raise failure from exc
        live.vm = vm
        live.touch()
        self.mark_running(live, vm, principal=principal)
        log.info("session %s running (vm %s, %s boot, %.2fs)", live.id, vm.id, vm.boot_method,
                 time.monotonic() - started)

    def mark_running(self, live: LiveSession, vm: SandboxVM, *, principal: Principal | None,
                     forked_from: str | None = None) -> None:
        with self.db.session() as s:
            row = s.get(SessionRow, live.id)
            if row is not None:  # the row outlives the session; only a wiped database has none
                row.status = SessionStatus.RUNNING
                row.vm_id = vm.id
        self.audit.record("session.created", account_id=live.account_id, resource_type="session",
                          resource_id=live.id, principal=principal, summary=f"session {live.id} started",
                          metadata={"workspace_id": live.workspace_id, "image": live.image,
                                    "ephemeral": live.ephemeral, "boot": vm.boot_method,
                                    **({"forked_from": forked_from} if forked_from else {})})

    def finish_row(self, session_id: str, *, status: str, reason: str, message: str | None = None) -> None:
        with self.db.session() as s:
            row = s.get(SessionRow, session_id)
            if row is None or row.status in ENDED_STATUSES:
                return
            row.status = status
            row.end_reason = reason
            row.failure_message = message
            row.ended_at = utcnow()
            account_id = row.account_id
        self.record_end(account_id, session_id, status=status, reason=reason, message=message)

    def record_end(self, account_id: str, session_id: str, *, status: str, reason: str,
                   message: str | None = None) -> None:
        """The audit event of a session's end: `session.terminated` or `session.failed`."""
        failed = status == SessionStatus.FAILED
        self.audit.record("session.failed" if failed else "session.terminated", account_id=account_id,
                          resource_type="session", resource_id=session_id, system=reason in SYSTEM_END_REASONS,
                          status=audit.FAILURE if failed else audit.SUCCESS,
                          summary=f"session {session_id} {status} ({reason})",
                          metadata={"end_reason": reason, **({"message": message} if message else {})})

    async def check_crashed(self, session_id: str) -> None:
        """Record a crash noticed on a read (the reaper would catch it a few seconds later)."""
        live = self.live.get(session_id)
        if live is not None and live.vm is not None and not live.terminating and live.vm.crashed:
            await self.end_crashed(live)

    # --- use -----------------------------------------------------------------
    async def live_session(self, principal: Principal, session_id: str) -> LiveSession:
        """The running session, or 404 / 409 session_not_running / 503 vm_crashed."""
        audit.note_principal(principal)  # what it does next (exec, files, PTY) is this caller's
        row = await asyncio.to_thread(self.get, principal, session_id)
        live = self.live.get(session_id)
        if live is not None and live.paused and not live.terminating:
            await self.suspender.wake(live, principal=principal)  # wake on request
            row = await asyncio.to_thread(self.get, principal, session_id)
        if live is not None and row.status == SessionStatus.STARTING:
            await self._wait_running(live)
            row = await asyncio.to_thread(self.get, principal, session_id)
        if live is None or live.terminating or live.vm is None or row.status != SessionStatus.RUNNING:
            raise session_not_running(session_id, row.status if row.status != SessionStatus.RUNNING else "stopping")
        if live.vm.crashed:
            await self.end_crashed(live)
            raise errors.VMCrashed(live.vm.exit_reason or "the VM stopped unexpectedly")
        live.touch()
        return live

    @asynccontextmanager
    async def using(self, live: LiveSession) -> AsyncIterator[SandboxVM]:
        """Run a request against the VM; a VM stopped meanwhile becomes a clean error."""
        vm = live.vm
        if vm is None:
            raise session_not_running(live.id, "starting")
        live.active_requests += 1
        try:
            yield vm
        except errors.VMCrashed:
            if live.saving or live.paused:  # paused under the request: not a crash
                raise session_not_running(live.id, "paused") from None
            if live.terminating or self.live.get(live.id) is not live:
                raise session_not_running(live.id, "terminated") from None
            await self.end_crashed(live)
            raise
        finally:
            live.active_requests -= 1
            live.touch()

    async def end_crashed(self, live: LiveSession) -> None:
        vm = live.vm
        reason = (vm.exit_reason if vm is not None else None) or "the VM stopped unexpectedly"
        log.warning("session %s: VM crashed: %s", live.id, reason)
        end_reason = vm.end_reason if vm is not None else EndReason.VM_CRASHED  # vm_oom: its memory limit
        await self.end(live, force=True, status=SessionStatus.FAILED, reason=end_reason, message=reason)

    # --- pause, resume, fork (chaser/service/suspend.py) -----------------------
    async def pause(self, principal: Principal, session_id: str) -> SessionRecord:
        return await self.suspender.pause(principal, session_id)

    async def resume(self, principal: Principal, session_id: str) -> SessionRecord:
        return await self.suspender.resume(principal, session_id)

    async def fork(self, principal: Principal, session_id: str, *, count: int,
                   workspace_names: builtins.list[str] | None = None) -> builtins.list[SessionRecord]:
        return await self.suspender.fork(principal, session_id, count=count, workspace_names=workspace_names)

    # --- stop ----------------------------------------------------------------
    async def terminate(self, principal: Principal, session_id: str, *, force: bool = False) -> SessionRecord:
        """Idempotent: terminating an ended session answers its current state."""
        row = self.get(principal, session_id)
        live = self.live.get(session_id)
        if live is not None:
            await self.end(live, force=force, status=SessionStatus.TERMINATED, reason=EndReason.TERMINATED)
        elif row.status in ACTIVE_STATUSES:  # no VM in this process: the row is stale
            self.finish_row(session_id, status=SessionStatus.TERMINATED, reason=EndReason.TERMINATED)
        return self.get(principal, session_id)

    async def end(self, live: LiveSession, *, force: bool, status: str, reason: str,
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
            except Exception:
                log.exception("session %s: stopping its VM failed", live.id)
            finally:
                self.live.pop(live.id, None)
                self.finish_row(live.id, status=status, reason=reason, message=message)
                await asyncio.to_thread(self.suspender.discard, live.id)  # a saved state, a resumed VM's disk
        log.info("session %s %s (%s)", live.id, status, reason)

    def bulk_targets(self, principal: Principal, request: BulkTerminateCreate
                     ) -> tuple[builtins.list[str], builtins.list[tuple[str, str, str]]]:
        """The sessions a bulk terminate names (ids, the workspaces' active sessions, or all active
        ones), from the database: an API replica, which holds none, finds the same ones; and
        (ref, code, message) of each workspace ref that resolves to none."""
        targets: dict[str, None] = {}
        failed: builtins.list[tuple[str, str, str]] = []
        if request.session_type not in (None, "sandbox"):
            return [], []
        for session_id in request.ids or []:
            targets[session_id] = None
        workspace_ids = set()
        for ref in request.workspaces or []:
            try:
                workspace_ids.add(self.workspaces.get(principal, ref).id)
            except errors.ChaserError as exc:
                failed.append((ref, exc.code, exc.message))
        if workspace_ids or request.all:
            for row in self.list(principal, status="active"):
                if request.all or row.workspace_id in workspace_ids:
                    targets[row.id] = None
        return list(targets), failed

    async def bulk_terminate(self, principal: Principal, request: BulkTerminateCreate
                             ) -> tuple[builtins.list[str], builtins.list[tuple[str, str, str]]]:
        targets, failed = await asyncio.to_thread(self.bulk_targets, principal, request)

        async def one(session_id: str) -> tuple[str, errors.ChaserError | None]:
            try:
                await self.terminate(principal, session_id, force=request.force)
                return session_id, None
            except errors.ChaserError as exc:
                return session_id, exc

        terminated: builtins.list[str] = []
        for session_id, error in await asyncio.gather(*(one(t) for t in targets)):
            if error is None:
                terminated.append(session_id)
            else:
                failed.append((session_id, error.code, error.message))
        return terminated, failed

    def rename_live(self, workspace: WorkspaceRecord) -> None:
        for live in self.live.values():
            if live.workspace_id == workspace.id:
                live.workspace_name = workspace.name or workspace.id

    async def shutdown(self) -> None:
        self._closing = True
        await asyncio.gather(  # a paused session stays paused: it resumes under the next server
            *(self.end(live, force=False, status=SessionStatus.TERMINATED, reason=EndReason.SERVER_SHUTDOWN)
              for live in list(self.live.values()) if not live.paused),
            return_exceptions=True,
        )
        if self._runtime is not None:
            await self._runtime.stop_all()
