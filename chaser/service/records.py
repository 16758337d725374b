"""What the service layer hands out: plain, immutable copies of stored rows.

ORM rows never leave the service layer (the API maps these to its public
models), so a route cannot lazy-load, mutate or keep a row across requests.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Self


class Record:
    @classmethod
    def of(cls, row: Any) -> Self:
        """A copy of the row's columns that this record names."""
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})  # type: ignore[arg-type]


@dataclass(frozen=True)
class SessionRecord(Record):
    id: str
    account_id: str
    workspace_id: str | None
    session_type: str
    status: str
    ephemeral: bool
    image: str | None
    proxy: str | None
    created_at: datetime
    expires_at: datetime | None
    last_activity_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None
    failure_message: str | None
    vm_id: str | None
    network: dict[str, Any] | None
    node_id: str | None


@dataclass(frozen=True)
class WorkspaceRecord(Record):
    id: str
    account_id: str
    name: str | None
    image: str | None
    session_type: str
    template: bool
    created_at: datetime
    source_workspace_id: str | None
    network: dict[str, Any] | None
    node_id: str | None  # the node holding its disk (None: none yet)


@dataclass(frozen=True)
class SnapshotRecord(Record):
    id: str
    account_id: str
    workspace_id: str
    name: str | None
    used_bytes: int
    has_disk: bool
    created_at: datetime
    restored_at: datetime | None


@dataclass(frozen=True)
class KeyRecord(Record):
    id: str
    account_id: str
    key_prefix: str
    name: str | None
    scopes: list[str]
    full_access: bool
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
