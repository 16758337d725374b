"""The services of one server process, wired together (the API holds one of these)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from chaser.config import Settings
from chaser.datadir import make_private
from chaser.runtime import Runtime
from chaser.service.audit import AuditLog
from chaser.service.commands import CommandService
from chaser.service.disks import WorkspaceDisks
from chaser.service.files import FileService
from chaser.service.forward import ForwardService
from chaser.service.images import ImageService
from chaser.service.keys import KeyManager
from chaser.service.nodes import NodeCapacity, NodeRegistry
from chaser.service.placement import Placement
from chaser.service.pty import Terminals
from chaser.service.ratelimit import RateLimiter, rate_limiter_for
from chaser.service.reaper import Reaper
from chaser.service.sessions import SessionManager
from chaser.service.workspace_move import WorkspaceMover
from chaser.service.workspaces import WorkspaceManager
from chaser.store import Database


@dataclass
class Services:
    settings: Settings
    db: Database
    audit: AuditLog
    keys: KeyManager
    workspaces: WorkspaceManager
    sessions: SessionManager
    nodes: NodeRegistry
    disks: WorkspaceDisks
    reaper: Reaper
    images: ImageService
    commands: CommandService
    files: FileService
    terminals: Terminals
    forwarding: ForwardService
    rate_limiter: RateLimiter
    placement: Placement  # where an API replica sends a request
    mover: WorkspaceMover  # a workspace's disk to another node; draining a node


def build_services(settings: Settings, runtime: Runtime | None = None, *,
                   node_capacity: Callable[[], NodeCapacity] | None = None, node: bool = False) -> Services:
    """Open the database (migrated to head) and wire the services; the runtime may come later.
    `node_capacity`: what this node registers (default: the host's CPUs, memory and disk);
    `node`: a `chaser node`, whose requests the replicas charged to the keys' rate limits."""
    make_private(settings.home)  # 0700; an existing home readable by others is tightened (one log line)
    db = Database(settings.effective_database_url)
    db.upgrade()
    audit = AuditLog(db, retention_days=settings.audit_retention_days)
    keys = KeyManager(db, audit)
    keys.ensure_account()
    workspaces = WorkspaceManager(db, settings, audit)
    sessions: SessionManager
    # The digests running sessions boot from: an image in use is neither removed (409) nor pruned.
    images = ImageService(settings, in_use=lambda: {
        live.image_digest for live in sessions.live.values() if live.image_digest})
    nodes = NodeRegistry(db, settings, audit, capacity=node_capacity)
    sessions = SessionManager(db, settings, runtime, workspaces, images=images, nodes=nodes)
    placement = Placement(db, settings)
    return Services(settings=settings, db=db, audit=audit, keys=keys, workspaces=workspaces, sessions=sessions,
                    nodes=nodes, disks=WorkspaceDisks(sessions), reaper=Reaper(sessions), images=images,
                    commands=CommandService(sessions, settings), files=FileService(sessions, settings),
                    terminals=Terminals(sessions), forwarding=ForwardService(sessions),
                    rate_limiter=rate_limiter_for(settings, db, node=node), placement=placement,
                    mover=WorkspaceMover(sessions, nodes, placement))
