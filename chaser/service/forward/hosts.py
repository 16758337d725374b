"""Host-style forwarding: which session a `Host` header names, and which
`Origin`s are a sandbox's (a session's own origin, or the opaque `null` of a
sandboxed path-style page)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

__all__ = ["host_session", "is_sandbox_origin"]

_HOST_RE_CACHE: dict[str, re.Pattern[str]] = {}


def host_session(host: str | None, base_domain: str | None) -> str | None:
    """`ses_x.example.com[:port]` with base domain `example.com` → `ses_x`. Only a
    session id (`ses_…`) names a session: `api.example.com` stays the API's."""
    if not host or not base_domain:
        return None
    domain = base_domain.strip(".").lower()
    pattern = _HOST_RE_CACHE.get(domain)
    if pattern is None:
        pattern = re.compile(r"^(ses_[a-z0-9]+)\." + re.escape(domain) + r"\.?(?::\d+)?$")
        _HOST_RE_CACHE[domain] = pattern
    match = pattern.match(host.strip().lower())
    return match.group(1) if match else None


def is_sandbox_origin(origin: str | None, base_domain: str | None) -> bool:
    """An `Origin` header of a page a sandbox served: `null` (path style runs
    sandboxed, in an opaque origin) or a session's host-style origin."""
    if origin is None:
        return False
    if origin.strip().lower() == "null":
        return True
    try:
        host = urlsplit(origin.strip()).netloc
    except ValueError:
        return True  # not an origin a browser sends: refuse as the unknown it is
    return host_session(host, base_domain) is not None
