"""`GET /v1/audit/events`: the account's audit log, newest first, paged with `before`/`limit`."""

from __future__ import annotations

from fastapi import APIRouter, Query

from chaser import errors
from chaser.api.deps import AuditRead, ServicesDep
from chaser.api.routes import AUTH_ERROR_RESPONSES, error_responses
from chaser.models.audit import (
    AUDIT_EVENT_ID_PATTERN,
    DEFAULT_AUDIT_LIMIT,
    MAX_AUDIT_LIMIT,
    AuditEventPublic,
    AuditEventsPublic,
)
from chaser.service.audit import AuditEventRecord, parse_event_id

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=AUTH_ERROR_RESPONSES)


def event_public(row: AuditEventRecord) -> AuditEventPublic:
    return AuditEventPublic(id=row.id, actor_type=row.actor_type, actor_id=row.actor_id, account_id=row.account_id,
                            client_address=row.client_address, action=row.action, resource_type=row.resource_type,
                            resource_id=row.resource_id, status=row.status, summary=row.summary,
                            metadata=row.metadata, created_at=row.created_at)


@router.get("/events", response_model=AuditEventsPublic, responses=error_responses(400),
            summary="The account's audit log, newest first (scope `audit.read`)")
async def list_events(
    services: ServicesDep, principal: AuditRead,
    before: str | None = Query(None, pattern=AUDIT_EVENT_ID_PATTERN, max_length=22,
                               description="Only events older than this event id (the last id of the previous page)"),
    limit: int = Query(DEFAULT_AUDIT_LIMIT, ge=1, le=MAX_AUDIT_LIMIT, description="At most this many events"),
    action: str | None = Query(None, max_length=64, description="Only this action, e.g. `command.exec`"),
    resource_type: str | None = Query(None, max_length=32, description="Only this resource type, e.g. `session`"),
    resource_id: str | None = Query(None, max_length=64, description="Only events of this resource"),
    status: str | None = Query(None, max_length=16, description="`success` or `failure`"),
) -> AuditEventsPublic:
    cursor = parse_event_id(before) if before is not None else None
    if before is not None and cursor is None:  # (the pattern refuses what would not parse)
        raise errors.InvalidRequest(f"before must be an audit event id (aud_<n>), not {before!r}")
    rows = await services.audit.list(principal.account_id, before=cursor, limit=limit, action=action,
                                     resource_type=resource_type, resource_id=resource_id, status=status)
    return AuditEventsPublic(events=[event_public(row) for row in rows])
