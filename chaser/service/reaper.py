"""The session reaper and restart recovery: what ends sessions nobody ends.

One pass (`reap_once`) ends crashed VMs' sessions (failed), sessions past their
lifetime and idle ones (terminated, or paused: CHASER_IDLE_ACTION), and paused
ones past CHASER_PAUSED_TTL_S; `run` repeats it. `recover_on_start` (after
chaser/service/recovery.py adopted the VMs an earlier server process left running)
ends the rows left active with nothing to adopt and takes back the paused ones.
`run` also prunes the audit log past its retention time (at most hourly).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sqlalchemy import select

from chaser import errors
from chaser.models.status import ACTIVE_STATUSES, EndReason, SessionStatus
from chaser.runtime import EgressPolicy
from chaser.service.live import LiveSession
from chaser.service.sessions import SessionManager
from chaser.store import SessionRow, Workspace
from chaser.store.tables import utcnow

log = logging.getLogger(__name__)


class Reaper:
    def __init__(self, sessions: SessionManager) -> None:
        self.sessions = sessions

    def recover_on_start(self) -> int:
        """Sessions an earlier process left active whose VM was not adopted (chaser/service/recovery.py
        ran first): end them. A session whose state was saved (paused; or killed between the save
        and its row's update) stays paused. Only this node's sessions (chaser/service/nodes.py
        `recoverable`): another server's sharing the database are that server's."""
        ended: list[tuple[str, str]] = []
        suspender = self.sessions.suspender
        with self.sessions.db.session() as s:
            mine = self.sessions.nodes.recoverable()
            for row in s.scalars(select(SessionRow).where(SessionRow.status.in_(ACTIVE_STATUSES), mine)):
                if row.id in self.sessions.live:
                    continue
                if suspender.has_saved_state(row.id):
                    row.status, row.vm_id, row.node_id = SessionStatus.PAUSED, None, self.sessions.nodes.id
                    self.sessions.live[row.id] = self._paused_live(s, row)
                    continue
                row.status, row.end_reason, row.ended_at = (SessionStatus.TERMINATED, EndReason.SERVER_RESTART,
                                                            utcnow())
                ended.append((row.account_id, row.id))
        for _account_id, session_id in ended:
            suspender.discard(session_id)
        for account_id, session_id in ended:
            self.sessions.record_end(account_id, session_id, status=SessionStatus.TERMINATED,
                                     reason=EndReason.SERVER_RESTART)
        count = len(ended)
        if count:
            log.warning("marked %d sessions of an earlier server process terminated (server_restart)", count)
        return count

    @staticmethod
    def _paused_live(s: Any, row: SessionRow) -> LiveSession:
        workspace = s.get(Workspace, row.workspace_id) if row.workspace_id else None
        last = row.last_activity_at or row.created_at
        return LiveSession(
            id=row.id, account_id=row.account_id, workspace_id=row.workspace_id,
            workspace_name=(workspace.name or workspace.id) if workspace is not None else row.workspace_id,
            ephemeral=row.ephemeral, image=row.image, proxy=row.proxy,
            expires_at=row.expires_at or utcnow(), paused=True, last_activity=last.timestamp(),
            network=EgressPolicy.from_dict(row.network) if row.network else None,
        )

    async def reap_once(self) -> list[tuple[str, str]]:
        """One pass: crashed VMs, sessions past their lifetime, idle sessions. (session id, end reason) each."""
        now = time.time()
        idle_timeout = self.sessions.settings.session_idle_timeout_s
        ended: list[tuple[str, str]] = []
        for live in list(self.sessions.live.values()):
            if live.vm is None or live.terminating:
                continue
            if live.vm.crashed:
                await self.sessions.end_crashed(live)
                ended.append((live.id, EndReason.VM_CRASHED))
            elif now >= live.expires_at.timestamp():
                await self.sessions.end(live, force=False, status=SessionStatus.TERMINATED,
                                        reason=EndReason.MAX_LIFETIME)
                ended.append((live.id, EndReason.MAX_LIFETIME))
            elif live.active_requests == 0 and now - live.last_activity >= idle_timeout:
                if self.sessions.suspender.idle_action(live) == "pause":
                    try:
                        await self.sessions.suspender.pause_live(live, system=True)
                        continue
                    except errors.ChaserError as exc:  # e.g. a full disk: it ends as before
                        log.warning("session %s: idle pause failed (%s); terminating it", live.id, exc.message)
                await self.sessions.end(live, force=False, status=SessionStatus.TERMINATED,
                                        reason=EndReason.IDLE_TIMEOUT)
                ended.append((live.id, EndReason.IDLE_TIMEOUT))
        ended += await self.sessions.suspender.reap_paused(now)
        return ended

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap_once()
            except Exception:
                log.exception("session reaper pass failed")
            try:
                await self.sessions.audit.prune_if_due()
            except Exception:
                log.exception("audit log pruning failed")
