"""Where an API replica sends a request (docs/architecture.md, "Several nodes").

A replica (`CHASER_LOCAL_RUNTIME=false`) runs no VM. A request about a running session goes to
the node the session's row names; a new session goes to the node holding its workspace's disk,
else to the best of `CHASER_PLACEMENT_CHOICES` nodes drawn at random among those that accept
sessions ("power of K choices": near the best spread without every replica piling onto the one
node a shared ranking would name). The API decides where; the node decides how.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select, update

from chaser import errors
from chaser.config import Settings
from chaser.models.status import ACTIVE_STATUSES, NodeStatus
from chaser.store import Database, NodeRow, SessionRow
from chaser.store.tables import Workspace, utcnow


@dataclass(frozen=True)
class NodeTarget:
    id: str
    url: str  # its advertised URL (no trailing slash)


@dataclass(frozen=True)
class Candidate:
    """A node that accepts sessions, with what it has left."""

    target: NodeTarget
    free_memory_mib: int
    free_vcpus: float
    free_sessions: int
    has_image: bool


class Placement:
    def __init__(self, db: Database, settings: Settings, *, rng: random.Random | None = None) -> None:
        self.db = db
        self.settings = settings
        self.rng = rng or random.SystemRandom()

    # --- an existing session or workspace -------------------------------------------------------
    def session_target(self, session_id: str) -> NodeTarget | None:
        """The node of an active session; None when the session is not active (or not known, or of
        no node): the replica answers from the database. NodeUnavailable when its node is lost."""
        with self.db.session() as s:
            found = s.execute(select(SessionRow.status, NodeRow.id, NodeRow.advertise_url, NodeRow.lost_at)
                              .join(NodeRow, NodeRow.id == SessionRow.node_id)
                              .where(SessionRow.id == session_id)).first()
        if found is None or found.status not in ACTIVE_STATUSES:
            return None
        return self._target(found.id, found.advertise_url, found.lost_at is not None, what=f"session {session_id}")

    def workspace_node(self, account_id: str, ref: str) -> NodeTarget | None:
        """The node holding the disk of workspace `ref` (id or name) of the account; None: no such
        workspace, or no node has its disk yet."""
        with self.db.session() as s:
            found = s.execute(select(NodeRow.id, NodeRow.advertise_url, NodeRow.lost_at)
                              .join(Workspace, Workspace.node_id == NodeRow.id)
                              .where(Workspace.account_id == account_id,
                                     (Workspace.id == ref) | (Workspace.name == ref))).first()
        if found is None:
            return None
        return self._target(found.id, found.advertise_url, found.lost_at is not None, what=f"workspace {ref}")

    def pin_workspace(self, workspace_id: str, node: NodeTarget) -> NodeTarget:
        """Give a workspace of no node to `node` unless another replica gave it one first: the node
        it has now. Two replicas placing one workspace at once send both requests to one node, whose
        workspace lock makes them one session."""
        self.pin(workspace_id, node.id)
        with self.db.session() as s:
            found = s.execute(select(NodeRow.id, NodeRow.advertise_url, NodeRow.lost_at)
                              .join(Workspace, Workspace.node_id == NodeRow.id)
                              .where(Workspace.id == workspace_id)).first()
        if found is None:  # deleted meanwhile: the node answers 404
            return node
        return self._target(found.id, found.advertise_url, found.lost_at is not None, what=f"workspace {workspace_id}")

    def pin(self, workspace_id: str, node_id: str) -> str | None:
        """Give a workspace of no node to `node_id` (a guarded UPDATE): the node it has now."""
        with self.db.session() as s:
            s.execute(update(Workspace).where(Workspace.id == workspace_id, Workspace.node_id.is_(None))
                      .values(node_id=node_id).execution_options(synchronize_session=False))
            pinned: str | None = s.scalar(select(Workspace.node_id).where(Workspace.id == workspace_id))
        return pinned

    def node_target(self, node_id: str) -> NodeTarget:
        """Where node `node_id` is reached: NodeNotFound, or NodeUnavailable when it is lost."""
        with self.db.session() as s:
            found = s.execute(select(NodeRow.id, NodeRow.advertise_url, NodeRow.lost_at)
                              .where(NodeRow.id == node_id)).first()
        if found is None:
            raise errors.NodeNotFound(f"no node {node_id!r} (see `chaser nodes list`)")
        return self._target(found.id, found.advertise_url, found.lost_at is not None, what=None)

    def _target(self, node_id: str, url: str | None, lost: bool, *, what: str | None) -> NodeTarget:
        if lost or not url:
            reason = "is lost (no heartbeat)" if lost else "advertises no URL"
            where = f"{what} is on node {node_id}, which" if what else f"node {node_id}"
            raise errors.NodeUnavailable(f"{where} {reason}")
        return NodeTarget(id=node_id, url=url.rstrip("/"))

    # --- a new session ------------------------------------------------------------------------
    def candidates(self, image: str | None = None) -> list[Candidate]:
        """Every node that accepts a session now: active, heartbeating, advertising a URL, not full."""
        fresh = utcnow() - timedelta(seconds=self.settings.node_lost_after_s)
        with self.db.session() as s:
            rows = s.execute(select(NodeRow.id, NodeRow.advertise_url, NodeRow.capacity_memory_mib,
                                    NodeRow.capacity_vcpus, NodeRow.capacity_sessions).where(
                NodeRow.status == NodeStatus.ACTIVE, NodeRow.lost_at.is_(None),
                NodeRow.last_heartbeat_at >= fresh, NodeRow.advertise_url.is_not(None))).all()
            load = dict(s.execute(select(SessionRow.node_id, func.count()).where(
                SessionRow.status.in_(ACTIVE_STATUSES), SessionRow.node_id.is_not(None))
                .group_by(SessionRow.node_id)).all())
            # A node that ran the image has it in its cache (no pull): the cheapest image affinity.
            with_image = set(s.scalars(select(SessionRow.node_id).where(
                SessionRow.image == image).distinct()).all()) if image else set()
        memory, vcpus = self.settings.memory_mib, self.settings.vcpus
        found = []
        for row in rows:
            active = load.get(row.id, 0)
            if active >= row.capacity_sessions:
                continue
            found.append(Candidate(target=NodeTarget(id=row.id, url=row.advertise_url.rstrip("/")),
                                   free_memory_mib=row.capacity_memory_mib - active * memory,
                                   free_vcpus=row.capacity_vcpus - active * vcpus,
                                   free_sessions=row.capacity_sessions - active, has_image=row.id in with_image))
        return found

    def choose(self, image: str | None = None) -> NodeTarget:
        """The best of K random accepting nodes: the image cached first, then free memory, then vCPUs."""
        candidates = self.candidates(image)
        if not candidates:
            raise errors.NoNodeAvailable("no node accepts new sessions now (all cordoned, lost or full): "
                                         "see `chaser nodes list`")
        drawn = self.rng.sample(candidates, min(self.settings.placement_choices, len(candidates)))
        best = max(drawn, key=lambda c: (c.has_image, c.free_memory_mib, c.free_vcpus, c.free_sessions))
        return best.target

    def any_node(self) -> NodeTarget:
        """A node for a request that any node can serve (an image pull): the least loaded."""
        candidates = self.candidates()
        if not candidates:
            raise errors.NoNodeAvailable("no node is active now: see `chaser nodes list`")
        return max(candidates, key=lambda c: (c.free_memory_mib, c.free_sessions)).target
