"""Moving a workspace's disk to another node, and draining a node (docs/architecture.md,
"Moving a workspace").

The node holding the disk does the move: under the workspace's lock (no session starts on it
meanwhile) and with no session of it active anywhere, it streams the workspace's directory — disk,
snapshots, saved VM states (chaser/service/disk_stream.py) — to the target node's
`PUT /_node/workspaces/{id}/disk`. The target writes it beside its workspaces, reads every file back
and checks its checksum, then puts it in place. Only then does the source point the workspace's row
at the target (a guarded UPDATE) and remove its own copy; a session asked for on the old node from
then on is refused (409 `workspace_on_other_node`) and replicas place it on the new one. A failure
at any step leaves the workspace where it was, whole.

Any process may be asked (the route, a drain): one that is not the disk's node hands the move to it
(`POST /_node/workspaces/{id}/move`, node token).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update

from chaser import errors
from chaser.models.status import ACTIVE_STATUSES, NodeStatus
from chaser.service.disk_stream import DigestMismatch, Receiver, StreamError, Summary, encode
from chaser.service.keys import Principal
from chaser.service.node_client import NodeClient
from chaser.service.nodes import NodeRegistry
from chaser.service.placement import NodeTarget, Placement
from chaser.service.records import WorkspaceRecord
from chaser.service.sessions import SessionManager
from chaser.store import NodeRow, SessionRow
from chaser.store.tables import Workspace

log = logging.getLogger(__name__)
INCOMING_PREFIX = ".incoming-"  # a move being received, beside the workspaces (removed at start)
FEED_BYTES = 1 << 20


@dataclass(frozen=True)
class MoveResult:
    workspace_id: str
    from_node_id: str | None
    node_id: str
    moved: bool  # False: it was on that node already, or had no disk yet (only its row changed)
    files: int = 0
    bytes: int = 0
    sha256: str | None = None
    duration_ms: int = 0

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class DrainItem:
    workspace_id: str
    name: str | None
    node_id: str | None  # where it went (None: it stayed)
    error: str | None = None


class WorkspaceMover:
    def __init__(self, sessions: SessionManager, nodes: NodeRegistry, placement: Placement) -> None:
        self.sessions = sessions
        self.workspaces = sessions.workspaces
        self.db = sessions.db
        self.nodes = nodes
        self.placement = placement
        self.settings = sessions.settings
        self.client = NodeClient(self.settings)

    async def close(self) -> None:
        await self.client.close()

    # --- from anywhere ----------------------------------------------------------------------------
    async def move(self, workspace: WorkspaceRecord, node_id: str, *, principal: Principal | None = None
                   ) -> MoveResult:
        current = await asyncio.to_thread(self._node_of, workspace.id)
        if current == node_id:
            return MoveResult(workspace_id=workspace.id, from_node_id=current, node_id=node_id, moved=False)
        if current is None and node_id == self.nodes.id and self.sessions.has_runtime:
            # To this node, which holds the disk if anyone does: only its row changes.
            await asyncio.to_thread(self.nodes.get, node_id)  # a node we are (NodeNotFound otherwise)
            return await asyncio.to_thread(self._pin, workspace, node_id)
        target = await asyncio.to_thread(self.target_node, node_id)
        if current is None and not self._disk_here(workspace.id):
            return await asyncio.to_thread(self._pin, workspace, target.id)  # no disk anywhere yet
        if current not in (None, self.nodes.id) or not self.sessions.has_runtime:
            assert current is not None
            source = await asyncio.to_thread(self.placement.node_target, current)
            answer = await self.client.request(source, "POST", f"/_node/workspaces/{workspace.id}/move",
                                               json={"node_id": target.id})
            return MoveResult(**answer)  # recorded in the audit log by the node that moved it
        result = await self.send(workspace, target)
        self.workspaces.audit.record(
            "workspace.moved", account_id=workspace.account_id, resource_type="workspace", resource_id=workspace.id,
            principal=principal, system=principal is None,
            summary=f"workspace {workspace.name or workspace.id} moved from node {current} to node {target.id}",
            metadata={"from_node_id": current, "node_id": target.id, "bytes": result.bytes, "sha256": result.sha256})
        return result

    async def record(self, workspace_id: str) -> WorkspaceRecord:
        def load() -> WorkspaceRecord:
            with self.db.session() as s:
                row = s.get(Workspace, workspace_id)
                if row is None:
                    raise errors.WorkspaceNotFound(f"no workspace {workspace_id!r}")
                return WorkspaceRecord.of(row)

        return await asyncio.to_thread(load)

    def target_node(self, node_id: str) -> NodeTarget:
        """A node a workspace may move to: known, heartbeating, active (not cordoned or draining)."""
        target = self.placement.node_target(node_id)
        with self.db.session() as s:
            status = s.scalar(select(NodeRow.status).where(NodeRow.id == node_id))
        if status != NodeStatus.ACTIVE:
            raise errors.Conflict(f"node {node_id} is {status}: it takes no workspaces (`chaser nodes uncordon`)",
                                  code="node_not_accepting")
        return target

    def _node_of(self, workspace_id: str) -> str | None:
        with self.db.session() as s:
            found = s.execute(select(Workspace.node_id).where(Workspace.id == workspace_id)).first()
        if found is None:
            raise errors.WorkspaceNotFound(f"no workspace {workspace_id!r}")
        node_id: str | None = found.node_id
        return node_id

    def _disk_here(self, workspace_id: str) -> bool:
        return self.sessions.has_runtime and self.workspaces.disk_path(workspace_id).parent.exists()

    def _pin(self, workspace: WorkspaceRecord, node_id: str) -> MoveResult:
        """A workspace of no node given to `node_id` (guarded: unless a session just placed it)."""
        pinned = self.placement.pin(workspace.id, node_id)
        if pinned != node_id:
            raise errors.Conflict(f"workspace {workspace.name or workspace.id} was just placed on node {pinned}; "
                                  "move it from there", code="workspace_moved")
        return MoveResult(workspace_id=workspace.id, from_node_id=None, node_id=node_id, moved=False)

    # --- on the node holding the disk ---------------------------------------------------------------
    async def send(self, workspace: WorkspaceRecord, target: NodeTarget) -> MoveResult:
        started = time.monotonic()
        async with self.sessions.workspace_lock(workspace.id):
            await asyncio.to_thread(self._check_movable, workspace)
            root = self.workspaces.disk_path(workspace.id).parent
            sent: list[Summary] = []
            answer = await self.client.request(target, "PUT", f"/_node/workspaces/{workspace.id}/disk",
                                               content=_in_thread(encode(root, sent)))
            received = Summary(**answer)
            if not sent or received != sent[0]:
                await self._discard(target, workspace.id)
                raise errors.ChecksumMismatch(f"node {target.id} received {received}, this node sent "
                                              f"{sent[0] if sent else 'nothing complete'}; the workspace stays here")
            if not await asyncio.to_thread(self._repoint, workspace.id, target.id):
                await self._discard(target, workspace.id)
                raise errors.Conflict(f"workspace {workspace.id} changed node meanwhile; it was not moved",
                                      code="workspace_moved")
            await asyncio.to_thread(shutil.rmtree, root, ignore_errors=True)
        log.info("workspace %s moved to node %s: %d files, %d bytes, sha256 %s", workspace.id, target.id,
                 received.files, received.bytes, received.sha256)
        return MoveResult(workspace_id=workspace.id, from_node_id=self.nodes.id, node_id=target.id, moved=True,
                          files=received.files, bytes=received.bytes, sha256=received.sha256,
                          duration_ms=round((time.monotonic() - started) * 1000))

    def _check_movable(self, workspace: WorkspaceRecord) -> None:
        with self.db.session() as s:
            active = s.scalar(select(SessionRow.id).where(SessionRow.workspace_id == workspace.id,
                                                          SessionRow.status.in_(ACTIVE_STATUSES)).limit(1))
            node_id = s.scalar(select(Workspace.node_id).where(Workspace.id == workspace.id))
        if active is not None:
            raise errors.WorkspaceBusy(f"workspace {workspace.name or workspace.id} has an active session {active}; "
                                       "terminate it before moving the workspace")
        if node_id not in (None, self.nodes.id):
            raise errors.WorkspaceElsewhere(f"workspace {workspace.id}'s disk is on node {node_id}, not this one")

    def _repoint(self, workspace_id: str, node_id: str) -> bool:
        with self.db.session() as s:
            result = s.execute(update(Workspace).where(
                Workspace.id == workspace_id,
                (Workspace.node_id == self.nodes.id) | Workspace.node_id.is_(None)).values(node_id=node_id)
                .execution_options(synchronize_session=False))
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def _discard(self, target: NodeTarget, workspace_id: str) -> None:
        try:
            await self.client.request(target, "DELETE", f"/_node/workspaces/{workspace_id}/disk")
        except errors.ChaserError as exc:  # its copy is of no workspace: removed at its next start
            log.warning("node %s kept a copy of workspace %s: %s", target.id, workspace_id, exc)

    # --- on the target node -----------------------------------------------------------------------
    async def receive(self, workspace_id: str, stream: AsyncIterator[bytes]) -> Summary:
        """Write a moved workspace's directory here, each file's checksum checked as read back."""
        if await asyncio.to_thread(self._node_of, workspace_id) == self.nodes.id:
            raise errors.Conflict(f"workspace {workspace_id}'s disk is on this node already", code="workspace_here")
        base = self.settings.workspaces_dir
        incoming = base / f"{INCOMING_PREFIX}{workspace_id}-{secrets.token_hex(4)}"
        receiver = Receiver(incoming, check_room=self._check_room)
        async with self.sessions.workspace_lock(workspace_id):
            try:
                pending = bytearray()
                async for piece in stream:
                    pending += piece
                    if len(pending) >= FEED_BYTES:
                        await asyncio.to_thread(receiver.feed, bytes(pending))
                        pending.clear()
                await asyncio.to_thread(receiver.feed, bytes(pending))
                summary = receiver.finish()
                await asyncio.to_thread(_install, incoming, base / workspace_id)
            except DigestMismatch as exc:
                raise errors.ChecksumMismatch(str(exc)) from None
            except StreamError as exc:
                raise errors.InvalidRequest(f"the workspace stream is not valid: {exc}") from None
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise errors.InsufficientStorage(f"node {self.nodes.id} ran out of disk space receiving "
                                                     f"workspace {workspace_id}") from None
                raise
            finally:
                receiver.close()
                await asyncio.to_thread(shutil.rmtree, incoming, ignore_errors=True)
        return summary

    def _check_room(self, needed: int) -> None:
        base = self.settings.workspaces_dir
        base.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(base).free
        reserve = (self.settings.host_disk_reserve_mib or 0) << 20
        if needed + reserve > free:
            raise errors.InsufficientStorage(f"node {self.nodes.id} has {free >> 20} MiB free, the workspace needs "
                                             f"{needed >> 20} MiB (and {reserve >> 20} MiB are kept free)")

    async def discard(self, workspace_id: str) -> None:
        """Drop a received copy the source did not make the workspace's (its disk is elsewhere)."""
        if await asyncio.to_thread(self._node_of, workspace_id) == self.nodes.id:
            raise errors.Conflict(f"workspace {workspace_id}'s disk is on this node: not removed",
                                  code="workspace_here")
        async with self.sessions.workspace_lock(workspace_id):
            await asyncio.to_thread(shutil.rmtree, self.workspaces.disk_path(workspace_id).parent, ignore_errors=True)

    def remove_leftovers(self) -> None:
        """At start: the partial copies of moves a crash cut short, and the old copies of workspaces
        that moved away (a crash between the row's update and the removal). A directory whose row
        names no node, or that has no row, is kept: it may be the only copy."""
        base = self.settings.workspaces_dir
        if not base.is_dir():
            return
        for path in base.glob(f"{INCOMING_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)
        names = [path.name for path in base.iterdir() if path.name.startswith("ws_")]
        if not names:
            return
        with self.db.session() as s:
            elsewhere = s.scalars(select(Workspace.id).where(
                Workspace.id.in_(names), Workspace.node_id.is_not(None), Workspace.node_id != self.nodes.id)).all()
        for workspace_id in elsewhere:
            log.warning("removing the old copy of workspace %s: its disk moved to another node", workspace_id)
            shutil.rmtree(base / workspace_id, ignore_errors=True)

    # --- draining ---------------------------------------------------------------------------------
    async def drain(self, principal: Principal, node_id: str) -> list[DrainItem]:
        """Mark the node draining (no new sessions), then move each of its idle workspaces to the
        best other node. A workspace with an active session stays (drain again once it ended)."""
        await asyncio.to_thread(self.nodes.set_status, principal, node_id, NodeStatus.DRAINING)
        rows = await asyncio.to_thread(self._workspaces_on, node_id)
        items = []
        for row in rows:
            try:
                target = await asyncio.to_thread(self.placement.choose, row.image)
                result = await self.move(row, target.id, principal=principal)
                items.append(DrainItem(workspace_id=row.id, name=row.name, node_id=result.node_id))
            except errors.ChaserError as exc:
                items.append(DrainItem(workspace_id=row.id, name=row.name, node_id=None, error=exc.message))
        return items

    def _workspaces_on(self, node_id: str) -> list[WorkspaceRecord]:
        with self.db.session() as s:
            rows = s.scalars(select(Workspace).where(Workspace.node_id == node_id).order_by(Workspace.created_at))
            return [WorkspaceRecord.of(row) for row in rows]


def _install(incoming: Path, final: Path) -> None:
    """Put a received directory in place; an older copy there (an earlier move away) is replaced."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(incoming, final)


async def _in_thread(pieces: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A blocking iterator's items, each read in a thread (file reads stay off the event loop)."""
    while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
        yield piece
