"""Who is calling: the one place that reads an API key off a request.

A key comes from `Authorization: Bearer sk_…`; where a browser cannot set that
header (a WebSocket, a host-style gateway login link) also from `?token=sk_…`.
No cookie ever carries an API key: the gateway's login cookie is a per-session
token (`chaser/service/forward/cookies.py`) that only the gateway reads. An
`X-Chaser-Account` header must name the key's own account.

A browser WebSocket (it always sends `Origin`) from a page a sandbox served —
`Origin: null` (a sandboxed path-style page) or a session's host-style origin —
is refused on the API's own WebSocket endpoints (`refuse_sandbox_origin`).
"""

from __future__ import annotations

from collections.abc import Mapping

from chaser import errors
from chaser.service.forward import is_sandbox_origin
from chaser.service.keys import KeyManager, Principal

__all__ = ["bearer_key", "principal_from", "refuse_sandbox_origin", "uses_query_token"]

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
                   scope: str | None = None) -> Principal:
    """The caller's principal: the `Authorization` header's key, else (when
    `query` is given) `?token=`.

    `headers` is case-insensitive (Starlette's). Raises Unauthorized (401)
    without a valid key, Forbidden (403) for another account or (with `scope`)
    a key that lacks it."""
    key = bearer_key(headers.get("authorization"))
    if key is None and query is not None:
        key = query.get("token") or None
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


def refuse_sandbox_origin(headers: Mapping[str, str], base_domain: str | None) -> None:
    """Forbidden (403) for a request whose `Origin` is a page a sandbox served."""
    origin = headers.get("origin")
    if is_sandbox_origin(origin, base_domain):
        raise errors.Forbidden(f"the API does not accept this from a page a sandbox served (Origin: {origin})")
