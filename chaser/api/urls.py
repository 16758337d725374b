"""Every URL the API hands out starts here: `CHASER_PUBLIC_URL` when it is set (validated
at start, chaser/config.py), else the base URL of the request being answered.

Session `endpoints.control` and the create's `Location`, public-port and login-link
URLs (path and host style), openapi `servers`, and — through the API answers its
tools get — what MCP tools see. Redirects the gateway answers stay relative (same host)."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

__all__ = ["forward_url", "public_base", "session_host_forward_url", "session_url"]

_HTTP_SCHEME = {"ws": "http", "wss": "https"}


def public_base(connection: HTTPConnection) -> str:
    """`scheme://host[:port]` (no trailing slash) of the API as its callers reach it."""
    public_url: str | None = connection.app.state.services.settings.public_url
    if public_url:
        return public_url
    base = urlsplit(str(connection.base_url))
    scheme = _HTTP_SCHEME.get(base.scheme, base.scheme)
    return f"{scheme}://{base.netloc}{base.path}".rstrip("/")


def session_url(connection: HTTPConnection, session_id: str) -> str:
    return f"{public_base(connection)}/v1/sessions/{session_id}"


def forward_url(connection: HTTPConnection, session_id: str, port: int) -> str:
    """The path-style gateway URL of a forwarded port (on the API's own origin)."""
    return f"{public_base(connection)}/s/{session_id}/forward/{port}/"


def session_host_forward_url(connection: HTTPConnection, session_id: str, port: int, domain: str) -> str:
    """The host-style gateway URL, `{id}.{domain}`, with the public base's scheme and port."""
    base = urlsplit(public_base(connection))
    netloc = f"{session_id}.{domain.strip('.')}" + (f":{base.port}" if base.port else "")
    return f"{base.scheme}://{netloc}/forward/{port}/"
