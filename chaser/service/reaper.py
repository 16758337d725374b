"""The session reaper and restart recovery: what ends sessions nobody ends.

One pass (`reap_once`) ends crashed VMs' sessions (failed), sessions past their
lifetime and idle ones (terminated); `run` repeats it. `recover_on_start` ends
the rows an earlier server process left running: their VMs died with it.
`run` also prunes the audit log past its retention time (at most hourly).
"""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy import select

from chaser.models.status import ACTIVE_STATUSES, EndReason, SessionStatus
from chaser.service.sessions import SessionManager
from chaser.store import SessionRow
from chaser.store.tables import utcnow

log = logging.getLogger(__name__)


class Reaper:
    def __init__(self, sessions: SessionManager) -> None:
        self.sessions = sessions

    def recover_on_start(self) -> int:
        """Sessions left running by an earlier process cannot be reattached: end them."""
        ended: list[tuple[str, str]] = []
        with self.sessions.db.session() as s:
            for row in s.scalars(select(SessionRow).where(SessionRow.status.in_(ACTIVE_STATUSES))):
                if row.id in self.sessions.live:
                    continue
                row.status, row.end_reason, row.ended_at = (SessionStatus.TERMINATED, EndReason.SERVER_RESTART,
                                                            utcnow())
                ended.append((row.account_id, row.id))
        for account_id, session_id in ended:
            self.sessions.record_end(account_id, session_id, status=SessionStatus.TERMINATED,
                                     reason=EndReason.SERVER_RESTART)
        count = len(ended)
        if count:
            log.warning("marked %d sessions of an earlier server process terminated (server_restart)", count)
        return count

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
                await self.sessions.end(live, force=False, status=SessionStatus.TERMINATED,
                                        reason=EndReason.IDLE_TIMEOUT)
                ended.append((live.id, EndReason.IDLE_TIMEOUT))
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
