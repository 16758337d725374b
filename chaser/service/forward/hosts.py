"""Host-style forwarding: which session a `Host` header names."""

from __future__ import annotations

import re

__all__ = ["host_session"]

_HOST_RE_CACHE: dict[str, re.Pattern[str]] = {}


def host_session(host: str | None, base_domain: str | None) -> str | None:
    """`ses_x.example.com[:port]` with base domain `example.com` → `ses_x`."""
    if not host or not base_domain:
        return None
    domain = base_domain.strip(".").lower()
    pattern = _HOST_RE_CACHE.get(domain)
    if pattern is None:
        pattern = re.compile(r"^([a-z0-9_-]+)\." + re.escape(domain) + r"\.?(?::\d+)?$")
        _HOST_RE_CACHE[domain] = pattern
    match = pattern.match(host.strip().lower())
    return match.group(1) if match else None
