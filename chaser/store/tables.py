"""SQLAlchemy 2 tables. Every resource row carries `account_id`; every query filters by it."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

PERSONAL_ACCOUNT_ID = "personal"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Stores naive UTC, always hands back aware UTC (SQLite keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex; the key itself is never stored
    key_prefix: Mapped[str] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    scopes: Mapped[list] = mapped_column(JSON, default=list)
    full_access: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Workspace(Base):
    __tablename__ = "workspaces"
    __table_args__ = (Index("ix_workspaces_account_name", "account_id", "name", unique=True),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    image: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    session_type: Mapped[str] = mapped_column(String(32), default="sandbox")
    template: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    source_workspace_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # clone_from
    # Egress policy its sessions inherit (EgressPolicy.to_dict()); None: the server default.
    network: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # The node its disk lives on (migration 0007); None: no session has used it yet.
    node_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)


class WorkspaceSnapshot(Base):
    """A copy of a workspace's disk at one moment (`workspaces/<id>/snapshots/<snap>.img`)."""

    __tablename__ = "workspace_snapshots"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    workspace_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    has_disk: Mapped[bool] = mapped_column(Boolean, default=True)  # False: the workspace had no disk yet
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    restored_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class SessionRow(Base):
    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    workspace_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    session_type: Mapped[str] = mapped_column(String(32), default="sandbox")
    status: Mapped[str] = mapped_column(String(32), index=True)  # starting | running | terminated | failed
    ephemeral: Mapped[bool] = mapped_column(Boolean, default=True)
    image: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    # Always {}: a session's env may hold secrets and is kept in memory only while it runs
    # (chaser/service/live.py); migration 0005 blanked what earlier versions stored.
    env: Mapped[dict] = mapped_column(JSON, default=dict)
    proxy: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_activity_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    failure_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    vm_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The session's effective egress policy (EgressPolicy.to_dict()), kept current by PUT …/network.
    network: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # The node (server process, chaser/service/nodes.py) its VM runs on; NULL: written before migration 0006.
    node_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)


class NodeRow(Base):
    """A node: one server process that runs VMs (today each `chaser server`). `status` is what an
    operator set (active | cordoned | draining); `lost_at` is set when its heartbeat stopped."""

    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # node_ + hex, kept in $CHASER_HOME/node-id
    name: Mapped[str] = mapped_column(String(200))
    advertise_url: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    version: Mapped[str] = mapped_column(String(64))
    labels: Mapped[dict] = mapped_column(JSON, default=dict)
    capacity_vcpus: Mapped[int] = mapped_column(Integer)
    capacity_memory_mib: Mapped[int] = mapped_column(BigInteger)
    capacity_disk_mib: Mapped[int] = mapped_column(BigInteger)
    capacity_sessions: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    lost_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RateBucket(Base):
    """One API key's request bucket, shared by the API replicas (chaser/service/ratelimit.py):
    `tokens` left at `at` (seconds since the epoch: the replicas' clocks must agree, NTP)."""

    __tablename__ = "rate_buckets"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tokens: Mapped[float] = mapped_column(Double)
    at: Mapped[float] = mapped_column(Double)


class AuditEvent(Base):
    """One entry of the audit log (chaser/service/audit.py): written once, never updated;
    deleted only by retention pruning. `id` grows with every event and is never reused."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_account_id_id", "account_id", "id"),
                      {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    account_id: Mapped[str] = mapped_column(String(64))
    actor_type: Mapped[str] = mapped_column(String(32))  # api_key | system | public
    actor_id: Mapped[str] = mapped_column(String(64))  # the key id, or what acted (reaper, server)
    client_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16))  # success | failure
    summary: Mapped[str] = mapped_column(String(500))
    details: Mapped[dict] = mapped_column(JSON, default=dict)  # small, never a secret (see AuditLog)
