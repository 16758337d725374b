"""Session statuses and end reasons: the words of the state machine in
chaser/service/sessions.py, as the API, the store and the CLI spell them."""

from __future__ import annotations

from enum import StrEnum


class SessionStatus(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"  # memory and disk saved, no VM (chaser/service/suspend.py)
    TERMINATED = "terminated"
    FAILED = "failed"


# A paused session is active: it holds its workspace and wakes on the next request.
ACTIVE_STATUSES: tuple[SessionStatus, ...] = (SessionStatus.STARTING, SessionStatus.RUNNING, SessionStatus.PAUSED)
ENDED_STATUSES: tuple[SessionStatus, ...] = (SessionStatus.TERMINATED, SessionStatus.FAILED)


class EndReason(StrEnum):
    """Why a session ended. A session that failed to start ends with its error's code instead."""

    TERMINATED = "terminated"  # a user asked
    IDLE_TIMEOUT = "idle_timeout"
    MAX_LIFETIME = "max_lifetime"
    SERVER_SHUTDOWN = "server_shutdown"
    SERVER_RESTART = "server_restart"  # left running by an earlier server process
    VM_CRASHED = "vm_crashed"
    VM_OOM = "vm_oom"  # killed by its memory limit
    WORKSPACE_DELETED = "workspace_deleted"
    SNAPSHOT_RESTORED = "snapshot_restored"
    PAUSED_TTL = "paused_ttl"  # paused longer than CHASER_PAUSED_TTL_S: its saved state is removed
    NODE_LOST = "node_lost"  # its node stopped heartbeating (chaser/service/nodes.py)


class NodeStatus(StrEnum):
    """What an operator set on a node; whether it is lost is its own field (`lost_at`)."""

    ACTIVE = "active"
    CORDONED = "cordoned"  # no new sessions; running ones are untouched
    DRAINING = "draining"  # cordoned, for a drain (moving its workspaces away is not implemented yet)
