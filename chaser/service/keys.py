"""API keys: `sk_` + token_urlsafe, stored only as a sha256 hash; scopes or full access."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from chaser import errors
from chaser.models.keys import FULL_ACCESS, SCOPES
from chaser.service.audit import AuditLog
from chaser.service.records import KeyRecord
from chaser.store import Account, ApiKey, Database
from chaser.store.tables import PERSONAL_ACCOUNT_ID, utcnow

KEY_PREFIX_CHARS = 11  # "sk_" + 8


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


GIVEN_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def check_given_key(key: str) -> str:
    """An operator's key (`CHASER_ADMIN_KEY`) as strong as a generated one: `sk_` + 32 or more
    URL-safe characters; errors.InvalidRequest otherwise (the value is never in the message)."""
    body = key.removeprefix("sk_")
    if not key.startswith("sk_") or len(body) < 32 or not set(body) <= GIVEN_KEY_CHARS:
        raise errors.InvalidRequest("the given API key must be sk_ followed by 32 or more URL-safe characters "
                                    "(A-Z a-z 0-9 - _); make one with: python3 -c 'import secrets; "
                                    "print(\"sk_\" + secrets.token_urlsafe(32))'")
    return key


@dataclass(frozen=True)
class Principal:
    """Who is calling: one API key of one account."""

    key_id: str
    account_id: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    full_access: bool = False

    def has(self, scope: str) -> bool:
        return self.full_access or scope in self.scopes

    def require(self, scope: str) -> None:
        if not self.has(scope):
            raise errors.Forbidden(f"this API key lacks the {scope!r} scope")


@dataclass
class CreatedKey:
    row: KeyRecord
    key: str  # shown once; only its hash is stored


LAST_USED_RESOLUTION_S = 60.0


class KeyManager:
    def __init__(self, db: Database, audit: AuditLog | None = None) -> None:
        self.db = db
        self.audit = audit or AuditLog(db)

    def ensure_account(self, account_id: str = PERSONAL_ACCOUNT_ID, name: str | None = None) -> None:
        try:
            with self.db.session() as s:
                if s.get(Account, account_id) is None:
                    s.add(Account(id=account_id, name=name or account_id))
        except IntegrityError:
            pass  # made meanwhile by another server sharing the database (replicas starting at once)

    def has_any_key(self, account_id: str = PERSONAL_ACCOUNT_ID) -> bool:
        with self.db.session() as s:
            return s.scalar(select(ApiKey.id).where(ApiKey.account_id == account_id).limit(1)) is not None

    def create(
        self,
        *,
        account_id: str = PERSONAL_ACCOUNT_ID,
        name: str | None = None,
        scopes: list[str] | None = None,
        full_access: bool = False,
        by: Principal | None = None,
        key_format: str = "chaser",
        secret: str | None = None,
    ) -> CreatedKey:
        """Create a key without permission checks (server start-up, tests; `by`: who asked).
        `key_format` `e2b`: `e2b_` + 40 hex (E2B's JS SDK checks that shape), else `sk_…`;
        `secret`: the key itself, given by the operator (`CHASER_ADMIN_KEY`): checked by `check_given_key`."""
        self.ensure_account(account_id)
        if secret is not None:
            key = check_given_key(secret)
        else:
            key = "e2b_" + secrets.token_hex(20) if key_format == "e2b" else "sk_" + secrets.token_urlsafe(32)
        row = ApiKey(
            id="key_" + secrets.token_hex(8), account_id=account_id, key_hash=hash_key(key),
            key_prefix=key[:KEY_PREFIX_CHARS], name=name, scopes=sorted(set(scopes or [])),
            full_access=full_access, created_at=utcnow(),
        )
        with self.db.session() as s:
            s.add(row)
        self.audit.record("key.created", account_id=account_id, resource_type="api_key", resource_id=row.id,
                          principal=by, system=by is None, summary=f"key {row.key_prefix}… created",
                          metadata={"name": name, "key_prefix": row.key_prefix, "scopes": row.scopes,
                                    "full_access": full_access})  # never the key
        return CreatedKey(row=KeyRecord.of(row), key=key)

    def create_for(self, principal: Principal, *, name: str | None, scopes: list[str] | None,
                   key_format: str = "chaser") -> CreatedKey:
        """A key created by `principal`: it can never grant more than it holds.
        No scopes means "like me": full access for a full-access caller, else the caller's scopes."""
        requested = set(scopes or [])
        unknown = requested - set(SCOPES) - {FULL_ACCESS}
        if unknown:
            raise errors.InvalidRequest(f"unknown scopes: {', '.join(sorted(unknown))}; known: {', '.join(SCOPES)}")
        full = FULL_ACCESS in requested or (not requested and principal.full_access)
        requested.discard(FULL_ACCESS)
        if full and not principal.full_access:
            raise errors.Forbidden("only a full-access key can create a full-access key")
        if not requested and not full:
            requested = set(principal.scopes)
        missing = {scope for scope in requested if not principal.has(scope)}
        if missing:
            raise errors.Forbidden(f"a key cannot grant scopes it lacks: {', '.join(sorted(missing))}")
        return self.create(account_id=principal.account_id, name=name,
                           scopes=[] if full else sorted(requested), full_access=full, by=principal,
                           key_format=key_format)

    def authenticate(self, key: str | None) -> Principal:
        if not key:
            raise errors.Unauthorized("missing API key: send 'Authorization: Bearer sk_…'")
        with self.db.session() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
            if row is None or row.revoked_at is not None:
                raise errors.Unauthorized("invalid or revoked API key")
            now = utcnow()
            last = row.last_used_at
            # At most one write a minute per key: a write per request would serialise every
            # request on the database (SQLite: one writer) for a value read at minute precision.
            if last is None or (now - last).total_seconds() >= LAST_USED_RESOLUTION_S:
                row.last_used_at = now
            return Principal(key_id=row.id, account_id=row.account_id,
                             scopes=frozenset(row.scopes or []), full_access=row.full_access)

    def is_valid(self, key: str | None) -> bool:
        try:
            self.authenticate(key)
            return True
        except errors.Unauthorized:
            return False

    def list(self, account_id: str) -> list[KeyRecord]:
        with self.db.session() as s:
            rows = s.scalars(select(ApiKey).where(ApiKey.account_id == account_id).order_by(ApiKey.created_at))
            return [KeyRecord.of(row) for row in rows]

    def revoke(self, principal: Principal, key_id: str) -> KeyRecord:
        with self.db.session() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.account_id == principal.account_id))
            if row is None:
                raise errors.NotFound(f"no API key {key_id!r}")
            if row.full_access and not principal.full_access:
                raise errors.Forbidden("only a full-access key can revoke a full-access key")
            revoked_now = row.revoked_at is None
            if revoked_now:
                row.revoked_at = utcnow()
            record = KeyRecord.of(row)
        if revoked_now:
            self.audit.record("key.revoked", account_id=record.account_id, resource_type="api_key",
                              resource_id=record.id, principal=principal, summary=f"key {record.key_prefix}… revoked",
                              metadata={"name": record.name, "key_prefix": record.key_prefix})
        return record
