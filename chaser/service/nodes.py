"""Nodes: the server processes that run VMs, as the database knows them (docs/architecture.md, "Nodes").

Today every `chaser server` is one node. Its identity is `$CHASER_HOME/node-id` (made once, 0600),
so a restart on the same home is the same node. At start it registers (its row upserted: name,
version, capacity; a cordon set by an operator is kept), then heartbeats every
CHASER_NODE_HEARTBEAT_S. Every server also looks for *other* nodes whose heartbeat is older
than CHASER_NODE_LOST_AFTER_S: such a node is marked lost and its active sessions end `failed`
(`node_lost`), in one transaction guarded by the node row (two servers doing it at once: one
wins, the other finds it lost already). A lost node that heartbeats again is no longer lost.
Each heartbeat also stops this node's VMs whose sessions the database has ended (failed while it
was marked lost, or terminated through another server).

Sessions record their node (`sessions.node_id`); rows written before migration 0006 have none.
Start-up recovery touches only its own node's sessions (`recoverable`, `adoptable`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, func, or_, select, update

from chaser import __version__, errors
from chaser.config import Settings
from chaser.models.status import ACTIVE_STATUSES, EndReason, NodeStatus, SessionStatus
from chaser.service.audit import AuditLog
from chaser.service.keys import Principal
from chaser.service.records import Record
from chaser.store import Database, NodeRow, SessionRow
from chaser.store.tables import PERSONAL_ACCOUNT_ID, utcnow

if TYPE_CHECKING:
    from chaser.service.sessions import SessionManager

log = logging.getLogger(__name__)
NODE_ID_FILE = "node-id"
REFUSING = frozenset({NodeStatus.CORDONED, NodeStatus.DRAINING})
LOST_MESSAGE = "its node {node} stopped heartbeating (no heartbeat for {seconds:.0f} s)"


@dataclass(frozen=True)
class NodeCapacity:
    vcpus: int
    memory_mib: int  # what VMs may have: the host's memory minus the reserve
    disk_mib: int  # likewise for the disk of CHASER_HOME
    sessions: int  # VMs at once (admission's session limit)


def host_capacity(settings: Settings) -> NodeCapacity:
    """The host as it is, without the runtime's admission limits (a server over another runtime)."""
    memory_mib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1024 * 1024)
    home = Path(settings.home)
    while not home.exists() and home != home.parent:
        home = home.parent
    return NodeCapacity(vcpus=os.cpu_count() or 1, memory_mib=memory_mib,
                        disk_mib=shutil.disk_usage(home).total // (1024 * 1024), sessions=settings.max_sessions or 0)


@dataclass(frozen=True)
class NodeRecord(Record):
    id: str
    name: str
    advertise_url: str | None
    version: str
    labels: dict[str, str]
    capacity_vcpus: int
    capacity_memory_mib: int
    capacity_disk_mib: int
    capacity_sessions: int
    status: str
    lost_at: datetime | None
    last_heartbeat_at: datetime
    started_at: datetime
    created_at: datetime


@dataclass(frozen=True)
class NodeView:
    """A node as `GET /v1/nodes` shows it."""

    node: NodeRecord
    sessions_running: int
    heartbeat_age_s: float
    current: bool  # the node answering


def load_node_id(home: Path) -> str:
    """This home's node id: read, or made once (0600; written aside and linked into place, so two
    processes starting at once agree on the first one)."""
    path = home / NODE_ID_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    home.mkdir(parents=True, exist_ok=True)
    node_id = "node_" + secrets.token_hex(8)
    partial = home / f".{NODE_ID_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, f"{node_id}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(partial, path)
    except FileExistsError:
        pass
    finally:
        partial.unlink()
    return path.read_text().strip()


class NodeRegistry:
    """This process's node and what it knows of the others."""

    def __init__(self, db: Database, settings: Settings, audit: AuditLog, *,
                 capacity: Callable[[], NodeCapacity] | None = None) -> None:
        self.db = db
        self.settings = settings
        self.audit = audit
        self._capacity = capacity or (lambda: host_capacity(settings))
        self.id = load_node_id(Path(settings.home))
        self.name = settings.node_name or socket.gethostname()

    # --- this node ----------------------------------------------------------------------------
    @property
    def advertised_url(self) -> str | None:
        """Where API replicas reach this node: CHASER_ADVERTISE_URL, else CHASER_PUBLIC_URL."""
        return self.settings.advertise_url or self.settings.public_url

    def register(self) -> NodeRecord:
        """Upsert this node's row at start: active again (a cordon or drain an operator set stays)."""
        capacity = self._capacity()
        now = utcnow()
        with self.db.session() as s:
            row = s.get(NodeRow, self.id, with_for_update=True)
            if row is None:
                row = NodeRow(id=self.id, status=NodeStatus.ACTIVE, created_at=now)
                s.add(row)
            row.name, row.advertise_url, row.version, row.labels = (self.name, self.advertised_url,
                                                                   __version__, dict(self.settings.node_labels))
            row.capacity_vcpus, row.capacity_memory_mib = capacity.vcpus, capacity.memory_mib
            row.capacity_disk_mib, row.capacity_sessions = capacity.disk_mib, capacity.sessions
            if row.status not in REFUSING:
                row.status = NodeStatus.ACTIVE
            row.lost_at, row.last_heartbeat_at, row.started_at = None, now, now
            s.flush()
            record = NodeRecord.of(row)
        log.info("node %s (%s) registered: %s", self.id, self.name, capacity)
        return record

    def heartbeat(self) -> bool:
        """Write this node's heartbeat; True when it had been marked lost meanwhile."""
        with self.db.session() as s:
            row = s.get(NodeRow, self.id, with_for_update=True)
            was_lost = row is not None and row.lost_at is not None
            if row is not None:
                row.last_heartbeat_at, row.lost_at = utcnow(), None
        if row is None:  # its row was deleted: registered anew
            self.register()
        return was_lost

    def check_accepting(self) -> None:
        """503 `node_cordoned` when this node is cordoned or draining (a new session, a fork)."""
        with self.db.session() as s:
            status = s.scalar(select(NodeRow.status).where(NodeRow.id == self.id))
        if status in REFUSING:
            raise errors.NodeCordoned(f"node {self.name} ({self.id}) is {status}: it starts no new sessions "
                                      f"(`chaser nodes uncordon {self.id}`)")

    def adoptable(self) -> ColumnElement[bool]:
        """Sessions whose VM this node may look for at start: its own, and those of no node (written
        before migration 0006): a VM found under this home proves it is this node's."""
        return or_(SessionRow.node_id == self.id, SessionRow.node_id.is_(None))

    def recoverable(self) -> ColumnElement[bool]:
        """Sessions this node's start-up recovery may end: its own; those of no node only while it is
        the only node this database has seen (else they may be another server's)."""
        with self.db.session() as s:
            others = s.scalar(select(func.count()).select_from(NodeRow).where(NodeRow.id != self.id)) or 0
        if others:
            return SessionRow.node_id == self.id
        return self.adoptable()

    # --- every node ---------------------------------------------------------------------------
    def views(self) -> list[NodeView]:
        now = utcnow()
        with self.db.session() as s:
            running: dict[str | None, int] = {node_id: count for node_id, count in s.execute(
                select(SessionRow.node_id, func.count()).where(
                    SessionRow.status == SessionStatus.RUNNING, SessionRow.node_id.is_not(None)
                ).group_by(SessionRow.node_id))}
            rows = [NodeRecord.of(row) for row in s.scalars(select(NodeRow).order_by(NodeRow.created_at))]
        return [NodeView(node=row, sessions_running=running.get(row.id, 0), current=row.id == self.id,
                         heartbeat_age_s=max(0.0, (now - row.last_heartbeat_at).total_seconds())) for row in rows]

    def get(self, node_id: str) -> NodeView:
        for view in self.views():
            if view.node.id == node_id:
                return view
        raise errors.NodeNotFound(f"no node {node_id!r}")

    def set_status(self, principal: Principal, node_id: str, status: NodeStatus) -> NodeView:
        with self.db.session() as s:
            row = s.get(NodeRow, node_id, with_for_update=True)
            if row is None:
                raise errors.NodeNotFound(f"no node {node_id!r}")
            before, row.status = row.status, status
        action = "node.uncordoned" if status == NodeStatus.ACTIVE else f"node.{status}"
        self.audit.record(action, account_id=principal.account_id, resource_type="node", resource_id=node_id,
                          principal=principal, summary=f"node {node_id} {before} → {status}",
                          metadata={"before": before, "status": str(status)})
        return self.get(node_id)

    def mark_lost(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """Other nodes past CHASER_NODE_LOST_AFTER_S: (node id, [(account id, session id) failed]) each
        this process marked (a node another server marked first is not among them)."""
        cutoff = utcnow() - timedelta(seconds=self.settings.node_lost_after_s)
        stale = (NodeRow.id != self.id, NodeRow.lost_at.is_(None), NodeRow.last_heartbeat_at < cutoff)
        with self.db.session() as s:
            candidates = s.scalars(select(NodeRow.id).where(*stale)).all()
        marked: list[tuple[str, list[tuple[str, str]]]] = []
        for node_id in candidates:
            with self.db.session() as s:
                now = utcnow()
                # The guard: the node row's UPDATE (locked until commit on PostgreSQL) matches once.
                won = s.execute(update(NodeRow).where(NodeRow.id == node_id, *stale[1:]).values(lost_at=now)
                                .execution_options(synchronize_session=False))
                if not won.rowcount:  # type: ignore[attr-defined]
                    continue
                last = s.scalar(select(NodeRow.last_heartbeat_at).where(NodeRow.id == node_id))
                message = LOST_MESSAGE.format(node=node_id, seconds=(now - last).total_seconds() if last else 0)
                ended = s.execute(update(SessionRow).where(
                    SessionRow.node_id == node_id, SessionRow.status.in_(ACTIVE_STATUSES),
                ).values(status=SessionStatus.FAILED, end_reason=EndReason.NODE_LOST, failure_message=message,
                         ended_at=now).returning(SessionRow.account_id, SessionRow.id)
                    .execution_options(synchronize_session=False)).all()
            marked.append((node_id, [(account_id, session_id) for account_id, session_id in ended]))
        return marked

    def _ended_among(self, session_ids: list[str]) -> list[tuple[str, str, str]]:
        """(id, status, end reason) of those the database has ended."""
        if not session_ids:
            return []
        with self.db.session() as s:
            return [(session_id, status, reason or status) for session_id, status, reason in s.execute(
                select(SessionRow.id, SessionRow.status, SessionRow.end_reason).where(
                    SessionRow.id.in_(session_ids), SessionRow.status.not_in(ACTIVE_STATUSES)))]

    # --- the background task ------------------------------------------------------------------
    async def sweep(self, sessions: SessionManager) -> list[str]:
        """Mark the lost nodes (off the loop) and record what ended: the nodes marked now."""
        marked = await asyncio.to_thread(self.mark_lost)
        for node_id, ended in marked:
            log.warning("node %s is lost (no heartbeat for %.0f s): %d sessions failed (node_lost)", node_id,
                        self.settings.node_lost_after_s, len(ended))
            self.audit.record("node.lost", account_id=PERSONAL_ACCOUNT_ID, resource_type="node",
                              resource_id=node_id, system=True, status="failure",
                              summary=f"node {node_id} lost: {len(ended)} sessions failed",
                              metadata={"sessions": len(ended), "marked_by": self.id})
            for account_id, session_id in ended:
                sessions.record_end(account_id, session_id, status=SessionStatus.FAILED, reason=EndReason.NODE_LOST)
        return [node_id for node_id, _ended in marked]

    async def reconcile(self, sessions: SessionManager) -> list[str]:
        """Stop the VMs of this node's sessions that the database has ended: failed while this node was
        marked lost (it stalled), or terminated through another server sharing the database."""
        ended = await asyncio.to_thread(self._ended_among, [
            live.id for live in sessions.live.values() if not live.terminating])
        for session_id, status, reason in ended:
            live = sessions.live.get(session_id)
            if live is not None and not live.terminating:
                log.warning("session %s ended in the database (%s, %s): its VM stops", session_id, status, reason)
                # The row stays as it is (finish_row leaves an ended row alone): no second audit event.
                await sessions.end(live, force=status == SessionStatus.FAILED, status=status, reason=reason)
        return [session_id for session_id, _status, _reason in ended]

    async def beat(self, sessions: SessionManager) -> None:
        """One heartbeat, what the database ended of this node's sessions, one look for lost nodes."""
        if await asyncio.to_thread(self.heartbeat):
            log.warning("node %s had been marked lost; the sessions the database ended stop", self.id)
        await self.reconcile(sessions)
        await self.sweep(sessions)

    async def watch_others(self, sessions: SessionManager) -> None:
        """An API replica's share: only the look for lost nodes, every heartbeat period."""
        while True:
            await asyncio.sleep(self.settings.node_heartbeat_s)
            try:
                await self.sweep(sessions)
            except Exception:
                log.exception("looking for lost nodes failed")

    async def run(self, sessions: SessionManager) -> None:
        while True:
            await asyncio.sleep(self.settings.node_heartbeat_s)
            try:
                await self.beat(sessions)
            except Exception:
                log.exception("node heartbeat failed")
