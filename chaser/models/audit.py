"""Audit log wire schemas (`GET /v1/audit/events`, chaser-sdk's `AuditEventInfo`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

AUDIT_EVENT_ID_PATTERN = "^aud_[0-9]{1,18}$"
DEFAULT_AUDIT_LIMIT = 100
MAX_AUDIT_LIMIT = 1000


class AuditEventPublic(BaseModel):
    id: str = Field(description="`aud_<n>`; n grows with every event and is never reused (the `before` cursor)")
    actor_type: str = Field(description="`api_key`, `public` (a request to a public port) or `system` (the server)")
    actor_id: str = Field(description="The API key's id, or `server`")
    account_id: str
    client_address: str | None = Field(default=None, description="The client's IP address, as the server saw it")
    action: str = Field(description="e.g. `command.exec`, `session.created`, `key.revoked` (docs/api.md)")
    resource_type: str = Field(description="`session`, `workspace`, `snapshot` or `api_key`")
    resource_id: str | None = None
    status: str = Field(description="`success` or `failure`")
    summary: str
    metadata: dict[str, Any] = Field(description="Small facts of the event: ids, names, paths, sizes, "
                                                 "a command line cut to 4 KiB; never secrets")
    created_at: datetime


class AuditEventsPublic(BaseModel):
    events: list[AuditEventPublic] = Field(description="Newest first")
