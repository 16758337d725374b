"""Who is calling: the one place that reads an API key off a request.

A key comes from `Authorization: Bearer sk_…`; where a browser cannot set that
header (a WebSocket, a gateway link) also from `?token=sk_…`, and on the
gateway from the `chaser_token` cookie that such a link sets. An
`X-Chaser-Account` header must name the key's own account.
"""

from __future__ import annotations

from collections.abc import Mapping

from chaser import errors
from chaser.service.forward import cookie_value
from chaser.service.keys import KeyManager, Principal

__all__ = ["bearer_key", "principal_from", "uses_query_token"]

MISSING = "missing API key: send 'Authorization: Bearer sk_…'"
MISSING_OR_TOKEN = MISSING + " (or ?token= for browsers)"
MALFORMED = "the Authorization header must be 'Bearer <API key>'"


def bearer_key(header: str | None) -> str | None:
    """The key in an `Authorization` header; None without one (or an empty one),
    Unauthorized if it is not `Bearer <key>`."""
    if not header:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise errors.Unauthorized(MALFORMED)
    return credentials.strip()


def principal_from(keys: KeyManager, headers: Mapping[str, str], *, query: Mapping[str, str] | None = None,
                   cookie: str | None = None, scope: str | None = None) -> Principal:
    """The caller's principal: the `Authorization` header's key, else (when
    `query` is given) `?token=`, else (when `cookie` names one) that cookie's.

    `headers` is case-insensitive (Starlette's). Raises Unauthorized (401)
    without a valid key, Forbidden (403) for another account or (with `scope`)
    a key that lacks it."""
    key = bearer_key(headers.get("authorization"))
    if key is None and query is not None:
        key = query.get("token") or None
    if key is None and cookie is not None:
        key = cookie_value(headers.get("cookie"), cookie)
    if key is None:
        raise errors.Unauthorized(MISSING if query is None else MISSING_OR_TOKEN)
    principal = keys.authenticate(key)
    account = headers.get("x-chaser-account")
    if account is not None and account.strip() and account.strip() != principal.account_id:
        raise errors.Forbidden(f"this API key has no access to account {account.strip()!r}")
    if scope is not None:
        principal.require(scope)
    return principal


def uses_query_token(headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
    """A one-time login link: the key came as `?token=`, with no Authorization header."""
    return headers.get("authorization") is None and bool(query.get("token"))
