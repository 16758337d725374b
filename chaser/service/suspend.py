"""Pause, resume (wake on request) and fork of sessions.

    running ──pause──► paused ──resume / any request──► running
       └──fork N──► N new running sessions (the source keeps running)

A paused session keeps its row (status `paused`) and its `LiveSession` (vm None);
its saved state lives in CHASER_HOME/sessions/<id>/ (chaser/vm/saved.py) and
survives a server restart. Its lock serialises pause, resume and terminate.
docs/pause-and-fork.md has the whole story.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from chaser import errors
from chaser.diskcopy import copy_disk
from chaser.models.status import EndReason, SessionStatus
from chaser.runtime import EgressPolicy, VMSpec
from chaser.service.keys import Principal
from chaser.service.live import LiveSession, session_hostname, session_not_running
from chaser.service.records import SessionRecord, WorkspaceRecord
from chaser.store import SessionRow
from chaser.store.tables import utcnow

if TYPE_CHECKING:
    from chaser.service.sessions import SessionManager

log = logging.getLogger(__name__)
SAVED_MARKER = "meta.json"  # written last by the runtime: a state without it is not complete


class Suspender:
    def __init__(self, sessions: SessionManager) -> None:
        self.sessions = sessions
        self.settings = sessions.settings

    def state_dir(self, session_id: str) -> Path:
        return self.settings.sessions_dir / session_id

    def has_saved_state(self, session_id: str) -> bool:
        directory = self.state_dir(session_id)
        return (directory / SAVED_MARKER).exists() and (directory / "memory.state").exists()

    def _writable(self, live: LiveSession) -> Path:
        if live.workspace_id is not None:
            return self.sessions.workspaces.disk_path(live.workspace_id)
        return self.state_dir(live.id) / "writable.img"

    # --- pause ---------------------------------------------------------------
    async def pause(self, principal: Principal, session_id: str) -> SessionRecord:
        row = self.sessions.get(principal, session_id)
        live = self.sessions.live.get(session_id)
        if live is None or live.vm is None or live.terminating or row.status != SessionStatus.RUNNING:
            raise errors.SessionNotRunning(
                f"session {session_id} is {row.status}: only a running session can be paused")
        await self.pause_live(live, principal=principal)
        return self.sessions.get(principal, session_id)

    async def pause_live(self, live: LiveSession, *, principal: Principal | None = None,
                         system: bool = False) -> None:
        async with live.lock:
            vm = live.vm
            if vm is None or live.terminating or self.sessions.live.get(live.id) is not live:
                raise session_not_running(live.id, "paused" if live.paused else "not running")
            started = time.monotonic()
            live.saving = True
            try:
                await self.sessions.runtime.save(vm, self.state_dir(live.id), keep_running=False)
            finally:
                live.saving = False
            live.vm, live.paused = None, True
            live.touch()
            with self.sessions.db.session() as s:
                row = s.get(SessionRow, live.id)
                if row is not None:
                    row.status, row.vm_id, row.last_activity_at = SessionStatus.PAUSED, None, utcnow()
        self.sessions.audit.record(
            "session.paused", account_id=live.account_id, resource_type="session", resource_id=live.id,
            principal=principal, system=system, summary=f"session {live.id} paused",
            metadata={"seconds": round(time.monotonic() - started, 3), "idle": system})
        log.info("session %s paused in %.2fs", live.id, time.monotonic() - started)

    # --- resume --------------------------------------------------------------
    async def resume(self, principal: Principal, session_id: str) -> SessionRecord:
        """Resume a paused session; a running one is answered as it is."""
        row = self.sessions.get(principal, session_id)
        live = self.sessions.live.get(session_id)
        if live is None or live.terminating or row.status not in (SessionStatus.PAUSED, SessionStatus.RUNNING,
                                                                    SessionStatus.STARTING):
            raise errors.SessionNotRunning(f"session {session_id} is {row.status}: it cannot be resumed")
        await self.wake(live, principal=principal)
        return self.sessions.get(principal, session_id)

    async def wake(self, live: LiveSession, *, principal: Principal | None = None) -> None:
        """Resume `live` if it is paused (every request that needs its VM calls this). A resume
        that fails after its state was consumed (the VM ran, then died) ends the session."""
        lost: errors.ChaserError | None = None
        async with live.lock:
            if not live.paused or live.terminating:
                return
            paused_since = live.last_activity
            started = time.monotonic()
            spec = VMSpec(image_disk=Path(), writable_disk=self._writable(live),
                          writable_size_bytes=self.settings.writable_size_bytes, session_id=live.id,
                          network=live.network)
            self.sessions.admit_many(live.account_id, 1)  # it holds a VM again: the account's limit applies
            try:
                vm = await self.sessions.runtime.resume(spec, self.state_dir(live.id), consume=True)
            except errors.ChaserError as exc:
                if self.has_saved_state(live.id):  # nothing changed: it stays paused
                    raise
                lost = exc
            else:
                live.vm, live.paused = vm, False
                live.touch()
                # The lifetime counts running time: the pause does not use it up.
                live.expires_at += timedelta(seconds=max(0.0, time.time() - paused_since))
                with self.sessions.db.session() as s:
                    row = s.get(SessionRow, live.id)
                    if row is not None:
                        row.status, row.vm_id, row.expires_at = SessionStatus.RUNNING, vm.id, live.expires_at
                await asyncio.to_thread(self._drop_memory_state, live.id)
        if lost is not None:
            await self.sessions.end(live, force=True, status=SessionStatus.FAILED, reason=lost.code,
                                    message=lost.message)
            raise lost
        self.sessions.audit.record(
            "session.resumed", account_id=live.account_id, resource_type="session", resource_id=live.id,
            principal=principal, summary=f"session {live.id} resumed",
            metadata={"seconds": round(time.monotonic() - started, 3)})
        log.info("session %s resumed in %.2fs", live.id, time.monotonic() - started)

    def _drop_memory_state(self, session_id: str) -> None:
        """A resumed VM outdates its saved memory (its meta file went before the VM ran again);
        an ephemeral disk stays (the VM runs on it)."""
        (self.state_dir(session_id) / "memory.state").unlink(missing_ok=True)

    def discard(self, session_id: str) -> None:
        """Everything a session kept under CHASER_HOME/sessions (on its end)."""
        shutil.rmtree(self.state_dir(session_id), ignore_errors=True)

    # --- fork ----------------------------------------------------------------
    async def fork(self, principal: Principal, session_id: str, *, count: int,
                   workspace_names: list[str] | None) -> list[SessionRecord]:
        limit = self.settings.max_fork_count
        if not 1 <= count <= limit:
            raise errors.InvalidRequest(f"count must be between 1 and {limit} (CHASER_MAX_FORK_COUNT)")
        if workspace_names is not None and len(workspace_names) != count:
            raise errors.InvalidRequest("workspace_names must name one new workspace per fork (count of them)")
        if workspace_names is not None and len(set(workspace_names)) != len(workspace_names):
            raise errors.InvalidRequest("workspace_names must be distinct")
        source = await self.sessions.live_session(principal, session_id)  # wakes a paused source
        self.sessions.nodes.check_accepting()  # forks are new sessions: not on a cordoned node
        self.sessions.admit_many(principal.account_id, count)
        workspaces = self.sessions.workspaces
        for name in workspace_names or []:
            workspaces.check_new_name(principal.account_id, name)
        fork_dir = self.settings.sessions_dir / f"fork-{secrets.token_hex(6)}"
        try:
            saved_disk = await self.save_copy(source, fork_dir)
            names: list[str | None] = list(workspace_names) if workspace_names is not None else [None] * count
            results = await asyncio.gather(
                *(self._start_fork(principal, source, fork_dir, saved_disk, name) for name in names),
                return_exceptions=True)
        finally:
            await asyncio.to_thread(shutil.rmtree, fork_dir, True)
        failures = [r for r in results if isinstance(r, BaseException)]
        started = [r for r in results if isinstance(r, LiveSession)]
        if failures:
            for live in started:  # all or nothing: a caller asked for N copies
                await self.sessions.end(live, force=True, status=SessionStatus.TERMINATED,
                                        reason=EndReason.TERMINATED)
            raise failures[0]
        self.sessions.audit.record(
            "session.forked", account_id=source.account_id, resource_type="session", resource_id=source.id,
            principal=principal, summary=f"session {source.id} forked {count}x",
            metadata={"forks": [live.id for live in started]})
        return [self.sessions.get(principal, live.id) for live in started]

    async def _start_fork(self, principal: Principal, source: LiveSession, fork_dir: Path, saved_disk: Path,
                          workspace_name: str | None) -> LiveSession:
        workspaces = self.sessions.workspaces
        workspace = None
        if workspace_name is not None:
            origin = workspaces.get_in_account(principal.account_id, source.workspace_id) \
                if source.workspace_id else None
            workspace = workspaces.create_row(
                account_id=principal.account_id, name=workspace_name, source=origin,
                image=None if origin is not None else source.image,
                network=source.network.to_dict() if source.network is not None else None)
        live, row = self.sessions.new_live(principal, workspace=workspace, image_ref=source.image,
                                           image_digest=source.image_digest, env=source.env, proxy=source.proxy,
                                           policy=source.network, ttl_seconds=None)
        self.sessions.insert(row, live)
        try:
            disk = self._writable(live)
            disk.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(copy_disk, saved_disk, disk)
            spec = VMSpec(image_disk=Path(), writable_disk=disk, writable_size_bytes=self.settings.writable_size_bytes,
                          session_id=live.id, network=live.network)
            vm = await self.sessions.runtime.resume(spec, fork_dir, hostname=session_hostname(live.id))
        except BaseException as exc:
            self.sessions.live.pop(live.id, None)
            failure = exc if isinstance(exc, errors.ChaserError) else errors.SandboxRuntimeError(
                f"the fork could not start: {type(exc).__name__}: {exc}")
            self.sessions.finish_row(live.id, status=SessionStatus.FAILED, reason=failure.code,
                                     message=failure.message)
            await asyncio.to_thread(self.discard, live.id)
            if workspace is not None:
                await workspaces.delete(workspace)
            raise
        live.vm = vm
        live.touch()
        self.sessions.mark_running(live, vm, principal=principal, forked_from=source.id)
        return live

    # --- memory snapshots of workspaces (chaser/service/disks.py) -------------------
    async def save_copy(self, live: LiveSession, directory: Path) -> Path:
        """The running (or paused: woken) session's memory and disk into `directory`; it goes on.
        Where the disk's copy is. Under its lock: no pause or terminate meanwhile."""
        await self.wake(live)
        async with live.lock:
            vm = live.vm
            if vm is None or live.terminating:
                raise session_not_running(live.id, "not running")
            live.saving = True
            try:
                return await self.sessions.runtime.save(vm, directory, keep_running=True)
            finally:
                live.saving = False

    async def start_from_copy(self, principal: Principal, workspace: WorkspaceRecord, directory: Path) -> LiveSession:
        """A new session of `workspace` resumed from the memory saved in `directory` (its disk is
        already the workspace's): the processes of the snapshot run again."""
        policy = EgressPolicy.from_dict(workspace.network) if workspace.network else None
        live, row = self.sessions.new_live(principal, workspace=workspace, image_ref=workspace.image, image_digest="",
                                           env={}, proxy=None, policy=policy, ttl_seconds=None)
        row.status = SessionStatus.PAUSED
        target = self.state_dir(live.id)

        def copy_state() -> None:
            target.mkdir(parents=True, exist_ok=True)
            for name in ("memory.state", SAVED_MARKER):  # the marker last: the state is complete then
                shutil.copyfile(directory / name, target / name)

        await asyncio.to_thread(copy_state)
        live.paused = True
        try:
            self.sessions.insert(row, live)
        except BaseException:
            await asyncio.to_thread(self.discard, live.id)
            raise
        try:
            await self.wake(live, principal=principal)
        except errors.ChaserError:
            await self.sessions.end(live, force=True, status=SessionStatus.TERMINATED, reason=EndReason.TERMINATED)
            raise
        return live

    # --- the reaper's part ---------------------------------------------------
    def idle_action(self, live: LiveSession) -> str:
        action = self.settings.idle_action
        if action == "auto":
            return "terminate" if live.ephemeral else "pause"
        return action

    async def reap_paused(self, now: float) -> list[tuple[str, str]]:
        """Sessions paused for longer than CHASER_PAUSED_TTL_S end (their saved state goes)."""
        ended: list[tuple[str, str]] = []
        for live in list(self.sessions.live.values()):
            if live.paused and not live.terminating and now - live.last_activity >= self.settings.paused_ttl_s:
                await self.sessions.end(live, force=True, status=SessionStatus.TERMINATED,
                                        reason=EndReason.PAUSED_TTL)
                ended.append((live.id, EndReason.PAUSED_TTL))
        return ended
