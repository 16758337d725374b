"""Restarts that keep sandboxes (docs/operations.md, "What survives what").

At start, before the reaper's `recover_on_start`: every session the database says
is running gets its VM back from the runtime if an earlier server process left it
running (a SIGKILL, a crash, or an exit with CHASER_KEEP_VMS_ON_EXIT); a session
whose VM was left but is lost (QEMU died meanwhile, or it does not answer) ends
`failed` with `end_reason` `server_restart` and a message saying why. The runtime
then removes the VMs nobody adopted. Sessions with nothing left to adopt are the
reaper's (terminated, `server_restart`; paused ones stay paused).

At exit with CHASER_KEEP_VMS_ON_EXIT: the sessions stay `running` in the database
and their VMs run on (`detach`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from chaser import errors
from chaser.models.status import EndReason, SessionStatus
from chaser.runtime import EgressPolicy
from chaser.service.live import LiveSession
from chaser.service.sessions import SessionManager
from chaser.store import SessionRow, Workspace
from chaser.store.tables import utcnow

log = logging.getLogger(__name__)


async def adopt_running(sessions: SessionManager) -> tuple[list[str], list[str]]:
    """(adopted session ids, ended ones)."""
    with sessions.db.session() as s:
        rows = [(row.id, _live_of(s, row)) for row in
                s.scalars(select(SessionRow).where(SessionRow.status == SessionStatus.RUNNING,
                                                   sessions.nodes.adoptable()))  # not another node's
                if row.id not in sessions.live and not sessions.suspender.has_saved_state(row.id)]
    adopted: list[str] = []
    ended: list[str] = []
    started = time.monotonic()
    try:
        for session_id, live in rows:
            try:
                vm = await sessions.runtime.adopt(session_id, network=live.network)
            except errors.ChaserError as exc:
                log.warning("session %s: %s; it ends (failed, server_restart)", session_id, exc.message)
                sessions.finish_row(session_id, status=SessionStatus.FAILED, reason=EndReason.SERVER_RESTART,
                                    message=exc.message)
                await asyncio.to_thread(sessions.suspender.discard, session_id)  # an unfinished save's files
                ended.append(session_id)
                continue
            if vm is None:
                continue  # nothing left: the reaper ends it as before
            live.vm = vm
            sessions.live[session_id] = live
            await asyncio.to_thread(_drop_unfinished_save, sessions.suspender.state_dir(session_id))
            with sessions.db.session() as s:
                row = s.get(SessionRow, session_id)
                if row is not None:
                    row.vm_id, row.node_id = vm.id, sessions.nodes.id  # (a row from before nodes: now ours)
            adopted.append(session_id)
            log.info("session %s adopted (vm %s)", session_id, vm.id)
    finally:
        await sessions.runtime.finish_adoption()
    if adopted:
        log.warning("adopted %d running sessions of an earlier server process (%.2fs)", len(adopted),
                    time.monotonic() - started)
    return adopted, ended


async def detach(sessions: SessionManager) -> None:
    """The server exits, its running sessions' VMs do not (CHASER_KEEP_VMS_ON_EXIT)."""
    sessions._closing = True  # no new session starts meanwhile
    if sessions.has_runtime:
        await sessions.runtime.detach_all()
    log.info("left %d sessions running for the next server to adopt",
             sum(1 for live in sessions.live.values() if live.vm is not None))


def _drop_unfinished_save(directory: Path) -> None:
    """A pause or fork the earlier server died in (its VM continues): its stream files go;
    a disk there may be the one the VM runs on (a resumed ephemeral session's) and stays."""
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        if path.name.startswith("memory.") or path.name.endswith(".partial"):
            path.unlink(missing_ok=True)


def _live_of(s: Session, row: SessionRow) -> LiveSession:
    """Its in-memory state again: the env it was created with is gone (never stored), so a
    later create naming its workspace with an `env` is answered 409 as a different one."""
    workspace = s.get(Workspace, row.workspace_id) if row.workspace_id else None
    return LiveSession(
        id=row.id, account_id=row.account_id, workspace_id=row.workspace_id,
        workspace_name=(workspace.name or workspace.id) if workspace is not None else row.workspace_id,
        ephemeral=row.ephemeral, image=row.image, proxy=row.proxy,
        expires_at=row.expires_at or utcnow(), last_activity=time.time(),  # the restart counts as activity
        network=EgressPolicy.from_dict(row.network) if row.network else None,
    )
