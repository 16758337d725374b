"""Header rewriting between the client and the server in the sandbox: hop-by-hop
headers, our own credentials (API key, `chaser_token` cookie) and Host stay out
of the upstream request; X-Forwarded-* go in; redirects point back into the
forward prefix.

Responses served on the API's own origin (path style, `/s/{id}/forward/…`) are
isolated: `Content-Security-Policy: sandbox …` without `allow-same-origin` gives
the document an opaque origin (no access to the API origin's cookies, storage or
same-origin reads), `X-Content-Type-Options: nosniff`, and the headers whose
effect reaches the whole origin (cookies, Clear-Site-Data, service worker scope,
HSTS, reporting, Alt-Svc) are dropped. On a host-style origin of its own a
sandbox keeps its headers, but may not set cookies for a parent domain (sibling
sessions) nor our login cookie."""

from __future__ import annotations

from collections.abc import Sequence
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

__all__ = [
    "COOKIE_NAME", "HOP_BY_HOP", "ORIGIN_WIDE_HEADERS", "SANDBOX_CSP", "WS_HANDSHAKE_HEADERS", "RawHeaders",
    "cookie_value", "cookie_values", "downstream_response_headers", "header_value", "is_chaser_authorization",
    "query_without", "rewrite_location", "sandboxed_policies", "strip_cookie", "upstream_request_headers",
]

# ASGI's form: lower-case names, latin-1 bytes.
RawHeaders = list[tuple[bytes, bytes]]

COOKIE_NAME = "chaser_token"
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Path style: what every forwarded response on the API's origin gets. No `allow-same-origin`:
# the document runs in an opaque origin; no `allow-top-navigation`, no `allow-popups-to-escape-sandbox`.
SANDBOX_CSP = "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"
# Response headers whose effect reaches the whole origin (every session's path-style forwards and
# the API): a sandbox may not send them on the API's origin. (X-Content-Type-Options is replaced.)
ORIGIN_WIDE_HEADERS = frozenset({
    "set-cookie", "set-cookie2", "clear-site-data", "service-worker-allowed", "strict-transport-security",
    "public-key-pins", "nel", "report-to", "reporting-endpoints", "alt-svc", "x-content-type-options",
})
# Handled by the websockets client itself when we open the upstream WebSocket.
WS_HANDSHAKE_HEADERS = frozenset({
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-accept",
    "sec-websocket-protocol",
})


def header_value(raw: Sequence[tuple[bytes, bytes]], name: str) -> str | None:
    """The first `name` header (case-insensitive), decoded; None if absent."""
    wanted = name.lower().encode("latin-1")
    for key, value in raw:
        if key.lower() == wanted:
            return value.decode("latin-1")
    return None


def _connection_tokens(headers: Sequence[tuple[bytes, bytes]]) -> set[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.decode("latin-1").split(",") if t.strip())
    return tokens


def strip_cookie(value: str, name: str = COOKIE_NAME) -> str:
    parts = [p.strip() for p in value.split(";")]
    return "; ".join(p for p in parts if p and p.split("=", 1)[0].strip() != name)


def is_chaser_authorization(value: str) -> bool:
    # Any whitespace after the scheme: a lenient upstream would still read "Bearer\tsk_…" as our key.
    scheme, _, credentials = value.strip().replace("\t", " ").partition(" ")
    return scheme.lower() == "bearer" and credentials.strip().startswith(("sk_", "e2b_"))  # e2b_: `keys create --e2b`


def _injects(*parts: bytes) -> bool:
    """CR, LF or NUL in a header name or value: never passed on (no header injection either way)."""
    return any(b"\r" in part or b"\n" in part or b"\0" in part for part in parts)


def upstream_request_headers(
    raw: Sequence[tuple[bytes, bytes]], *, port: int, client_host: str | None, scheme: str, prefix: str,
    websocket: bool = False,
) -> list[tuple[str, str]]:
    """The client's headers as they go upstream: hop-by-hop headers, Host, our
    API key and our cookie removed; X-Forwarded-* added."""
    drop = HOP_BY_HOP | _connection_tokens(raw) | {"host", "content-length"}
    if websocket:
        drop = drop | WS_HANDSHAKE_HEADERS
    out: list[tuple[str, str]] = [("host", f"localhost:{port}")]
    original_host = ""
    forwarded_for = ""
    for name_b, value_b in raw:
        if _injects(name_b, value_b):
            continue
        name = name_b.decode("latin-1").lower()
        value = value_b.decode("latin-1")
        if name == "host":
            original_host = value
        if name == "x-forwarded-for":
            forwarded_for = value
            continue
        if name in drop or name.startswith("x-forwarded-"):
            continue
        if name == "authorization" and is_chaser_authorization(value):
            continue
        if name == "cookie":
            value = strip_cookie(value)
            if not value:
                continue
        out.append((name, value))
    if client_host:
        out.append(("x-forwarded-for", f"{forwarded_for}, {client_host}" if forwarded_for else client_host))
    if original_host:
        out.append(("x-forwarded-host", original_host))
    out.append(("x-forwarded-proto", scheme))
    out.append(("x-forwarded-prefix", prefix))
    return out


def downstream_response_headers(raw: Sequence[tuple[bytes, bytes]], *, port: int, prefix: str,
                                api_origin: bool = True) -> RawHeaders:
    """The upstream's response headers for the client: hop-by-hop removed,
    Location/Content-Location rewritten into the forward prefix. On the API's
    origin (`api_origin`, path style) the response is sandboxed (module doc);
    on a session's own origin only parent-domain cookies and ours are dropped."""
    drop = HOP_BY_HOP | _connection_tokens(raw)
    if api_origin:
        drop = drop | ORIGIN_WIDE_HEADERS
    out: RawHeaders = []
    for name, value in raw:
        lname = name.lower()
        if lname.decode("latin-1") in drop or _injects(name, value):
            continue
        if lname in (b"location", b"content-location"):
            value = rewrite_location(value.decode("latin-1"), port=port, prefix=prefix).encode("latin-1")
        elif lname == b"content-security-policy" and api_origin:
            policies = sandboxed_policies(value.decode("latin-1"))
            if not policies:
                continue
            value = policies.encode("latin-1")
        elif lname == b"set-cookie" and not _own_origin_cookie(value.decode("latin-1")):
            continue
        out.append((lname, value))
    if api_origin:
        out.append((b"content-security-policy", SANDBOX_CSP.encode()))
        out.append((b"x-content-type-options", b"nosniff"))
    return out


def sandboxed_policies(value: str) -> str:
    """A sandbox's own CSP header without its `sandbox` directives: its other
    directives only restrict further, but browsers may apply the *last* sandbox
    directive of all policies (the HTML standard does), so ours must be the only one."""
    policies = []
    for policy in value.split(","):
        directives = [d.strip() for d in policy.split(";")]
        kept = [d for d in directives if d and d.split(None, 1)[0].lower() != "sandbox"]
        if kept:
            policies.append("; ".join(kept))
    return ", ".join(policies)


def _own_origin_cookie(set_cookie: str) -> bool:
    """A host-style sandbox may set host-only cookies, but none for a parent domain
    (`Domain=`: it would reach sibling sessions) and never our login cookie."""
    name, _, rest = set_cookie.partition("=")
    if name.strip() == COOKIE_NAME:
        return False
    return all(attribute.split("=", 1)[0].strip().lower() != "domain" for attribute in rest.split(";")[1:])


def rewrite_location(value: str, *, port: int, prefix: str) -> str:
    for origin in (f"http://localhost:{port}", f"http://127.0.0.1:{port}", f"http://0.0.0.0:{port}"):
        if value == origin or value.startswith(origin + "/"):
            return prefix + (value[len(origin):] or "/")
    if value.startswith("/") and not value.startswith("//"):
        return prefix + value
    return value


def query_without(query: str, name: str) -> str:
    return urlencode([(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != name])


def cookie_values(cookie_header: str | None, name: str = COOKIE_NAME) -> list[str]:
    """Every value of cookie `name` in a `Cookie` header, in order (a browser sends
    several when cookies of the same name exist for different paths or domains)."""
    values = []
    for part in (cookie_header or "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key.strip() == name:
            values.append(value.strip().strip('"'))
    return values


def cookie_value(cookie_header: str | None, name: str = COOKIE_NAME) -> str | None:
    if not cookie_header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(cookie_header)
    except Exception:  # noqa: BLE001 - a malformed Cookie header is just no cookie
        for part in cookie_header.split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return None
    morsel = jar.get(name)
    return morsel.value if morsel else None
