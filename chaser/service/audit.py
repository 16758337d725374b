"""The audit log: who (API key, account, client address) did what, and when.

Append-only: events are written once and never changed; the only deletion is
retention pruning (`CHASER_AUDIT_RETENTION_DAYS`, run by the reaper at most
hourly). Event ids grow with every event and are never reused, so
`before=<id>` is a stable cursor for paging from the newest backwards.

Who: a service that knows its caller passes `principal=`; else the principal
the API authenticated for this request (`note_principal`, from
`chaser/api/auth.py`), with the client address that the API's
`AuditOriginMiddleware` put in this request's context (`request_origin`).
Outside any request (the reaper, start-up recovery) the actor is the server.

Recording never fails the caller's request and never blocks the event loop:
`record` builds the row and queues it; one writer task writes the queue in a
worker thread (in order, so ids follow the order of `record` calls). With no
event loop running (start-up code, tests) the row is written at once.

What is kept is small and never a secret: ids, names, paths, sizes, exit codes,
a command line cut to `MAX_TEXT_BYTES`. Never env values, file contents, API
keys or tokens.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select

from chaser.store import Database
from chaser.store.tables import AuditEvent, utcnow

if TYPE_CHECKING:
    from chaser.service.keys import Principal

log = logging.getLogger(__name__)

__all__ = ["AuditEventRecord", "AuditLog", "RequestOrigin", "cap_text", "event_id", "note_principal",
           "parse_event_id", "request_origin"]

SUCCESS, FAILURE = "success", "failure"
MAX_TEXT_BYTES = 4096  # a command line, a path
MAX_SUMMARY_CHARS = 500
MAX_ID_CHARS = 64
PRUNE_INTERVAL_S = 3600.0
WRITE_BATCH = 200
EVENT_ID_PREFIX = "aud_"
SYSTEM_ACTOR_ID = "server"


@dataclass
class RequestOrigin:
    """Who is behind the current request: its client address, and the principal once authenticated."""

    client_address: str | None
    principal: Principal | None = None


_origin: ContextVar[RequestOrigin | None] = ContextVar("chaser_audit_origin", default=None)


@contextmanager
def request_origin(client_address: str | None) -> Iterator[RequestOrigin]:
    """The context of one request (the API's middleware wraps every HTTP and WebSocket request)."""
    token = _origin.set(RequestOrigin(client_address=client_address[:MAX_ID_CHARS] if client_address else None))
    try:
        yield _origin.get()  # type: ignore[misc]  # just set
    finally:
        _origin.reset(token)


def note_principal(principal: Principal) -> None:
    """The API authenticated this request's caller (a no-op outside a request)."""
    origin = _origin.get()
    if origin is not None:
        origin.principal = principal


def cap_text(text: str, limit: int = MAX_TEXT_BYTES) -> tuple[str, bool]:
    """`text` cut to `limit` bytes of UTF-8 (never inside a character), and whether it was cut."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text, False
    return data[:limit].decode("utf-8", "ignore"), True


def event_id(number: int) -> str:
    return f"{EVENT_ID_PREFIX}{number}"


def parse_event_id(value: str) -> int | None:
    """The number of an event id (`aud_<n>`), or None if `value` is not one."""
    digits = value.removeprefix(EVENT_ID_PREFIX)
    if value.startswith(EVENT_ID_PREFIX) and digits.isascii() and digits.isdigit() and len(digits) <= 18:
        return int(digits)
    return None


@dataclass(frozen=True)
class AuditEventRecord:
    id: str
    created_at: datetime
    account_id: str
    actor_type: str
    actor_id: str
    client_address: str | None
    action: str
    resource_type: str
    resource_id: str | None
    status: str
    summary: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, row: AuditEvent) -> AuditEventRecord:
        return cls(id=event_id(row.id), created_at=row.created_at, account_id=row.account_id,
                   actor_type=row.actor_type, actor_id=row.actor_id, client_address=row.client_address,
                   action=row.action, resource_type=row.resource_type, resource_id=row.resource_id,
                   status=row.status, summary=row.summary, metadata=dict(row.details or {}))


def _small(value: Any) -> Any:
    """A JSON value of scalars with every string cut to MAX_TEXT_BYTES (lists to 100 items)."""
    if isinstance(value, str):
        return cap_text(value)[0]
    if isinstance(value, Mapping):
        return {str(k)[:MAX_ID_CHARS]: _small(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
        return [_small(v) for v in items[:100]]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return cap_text(str(value))[0]


class AuditLog:
    def __init__(self, db: Database, *, retention_days: float = 90.0) -> None:
        self.db = db
        self.retention_days = retention_days
        self._pending: deque[dict[str, Any]] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._last_prune = 0.0  # monotonic; 0: not yet

    # --- writing ---------------------------------------------------------------------
    def record(self, action: str, *, account_id: str, resource_type: str, resource_id: str | None = None,
               summary: str = "", metadata: Mapping[str, Any] | None = None, status: str = SUCCESS,
               principal: Principal | None = None, system: bool = False) -> None:
        """Append one event. Never raises: a failure to record is logged, the caller carries on.
        The actor: `principal`, else this request's (see the module doc); `system`: the server."""
        try:
            origin = _origin.get()
            who = None if system else (principal or (origin.principal if origin is not None else None))
            if who is None:
                actor_type, actor_id, address = "system", SYSTEM_ACTOR_ID, None
            else:
                actor_type = "public" if who.key_id == "public" else "api_key"
                actor_id, address = who.key_id, origin.client_address if origin is not None else None
            row = dict(created_at=utcnow(), account_id=account_id[:MAX_ID_CHARS], actor_type=actor_type,
                       actor_id=actor_id[:MAX_ID_CHARS], client_address=address, action=action,
                       resource_type=resource_type, resource_id=resource_id[:MAX_ID_CHARS] if resource_id else None,
                       status=status, summary=summary[:MAX_SUMMARY_CHARS], details=_small(dict(metadata or {})))
            self._enqueue(row)
        except Exception:  # the audit log must never fail the request it records
            log.exception("audit: could not record %s of %s %s", action, resource_type, resource_id)

    def _enqueue(self, row: dict[str, Any]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop here (start-up, a test's thread): write now
            self._write([row])
            return
        self._pending.append(row)
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._drain(), name="audit-writer")

    async def _drain(self) -> None:
        while self._pending:
            # Bounded batches: a worker thread writing thousands of rows at once would still hold the GIL
            # long enough to stall the loop for tens of milliseconds.
            batch = [self._pending.popleft() for _ in range(min(len(self._pending), WRITE_BATCH))]
            try:
                await asyncio.to_thread(self._write, batch)
            except Exception:  # logged with what was lost; the next events are tried anew
                log.exception("audit: %d events could not be written (%s)", len(batch),
                              ", ".join(sorted({row["action"] for row in batch})))

    def _write(self, rows: list[dict[str, Any]]) -> None:
        with self.db.session() as s:  # one executemany, in the order recorded: ids follow that order
            s.execute(insert(AuditEvent), rows)

    async def flush(self) -> None:
        """Wait until every event recorded so far on this loop is written."""
        writer = self._writer
        if writer is not None and not writer.done() and writer.get_loop() is asyncio.get_running_loop():
            await asyncio.shield(writer)

    # --- reading ---------------------------------------------------------------------
    async def list(self, account_id: str, *, before: int | None = None, limit: int = 100,
                   action: str | None = None, resource_type: str | None = None, resource_id: str | None = None,
                   status: str | None = None) -> list[AuditEventRecord]:
        """The account's events, newest first; `before`: only those older than that event id."""
        await self.flush()
        return await asyncio.to_thread(self._list, account_id, before, limit, action, resource_type,
                                       resource_id, status)

    def _list(self, account_id: str, before: int | None, limit: int, action: str | None, resource_type: str | None,
              resource_id: str | None, status: str | None) -> builtins.list[AuditEventRecord]:
        query = select(AuditEvent).where(AuditEvent.account_id == account_id)
        if before is not None:
            query = query.where(AuditEvent.id < before)
        for column, value in ((AuditEvent.action, action), (AuditEvent.resource_type, resource_type),
                              (AuditEvent.resource_id, resource_id), (AuditEvent.status, status)):
            if value is not None:
                query = query.where(column == value)
        with self.db.session() as s:
            return [AuditEventRecord.of(row) for row in s.scalars(query.order_by(AuditEvent.id.desc()).limit(limit))]

    # --- retention -------------------------------------------------------------------
    async def prune(self, now: datetime | None = None) -> int:
        """Delete the events older than the retention time; how many. `0` days: keep everything."""
        if self.retention_days <= 0:
            return 0
        cutoff = (now or utcnow()) - timedelta(days=self.retention_days)
        await self.flush()
        count = await asyncio.to_thread(self._prune, cutoff)
        if count:
            log.info("audit: pruned %d events older than %s", count, cutoff.isoformat(timespec="seconds"))
        return count

    def _prune(self, cutoff: datetime) -> int:
        with self.db.session() as s:
            result = s.execute(delete(AuditEvent).where(AuditEvent.created_at < cutoff))
            return int(getattr(result, "rowcount", 0) or 0)

    async def prune_if_due(self) -> int:
        """`prune`, at most once per PRUNE_INTERVAL_S (the reaper calls this on every pass)."""
        now = time.monotonic()
        if self._last_prune and now - self._last_prune < PRUNE_INTERVAL_S:
            return 0
        self._last_prune = now
        return await self.prune()
