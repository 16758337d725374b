"""Port forwarding: the gateway `/s/{id}/forward/{port}/…` (HTTP + WebSocket; also
host style `{id}.<base_domain>/forward/{port}/…`), raw TCP tunnels
`/v1/sessions/{id}/tunnel/{port}` (WebSocket, used by `chaser forward`), and
public ports `POST /v1/sessions/{id}/ports/{port}/public`.

Gateway access: a public port needs nothing; otherwise an API key with
`exec.write` from `Authorization: Bearer`, or (WebSocket) `?token=<key>`.
Browsers log in only on a session's own host-style origin: a GET/HEAD with
`?token=<key>` (or a 60 s link token from `POST /v1/sessions/{id}/ports/{port}/link`)
there answers a 302 to the same URL without `token` and sets
`chaser_token=<per-session token>; HttpOnly; Path=/; SameSite=Lax` (host-only;
`Secure` over https), which then authorises that session's forwards only, and
only from its own origin (a cookie request with a foreign `Origin` is 403).
Path style is on the API's origin: no login link (400), no cookie, and every
response sandboxed (`chaser/service/forward/headers.py`). A session that is
unknown *or no longer running* is a 404 on the gateway (a missing site),
unlike the API's 409.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Body, Path, Request, WebSocket
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel
from starlette.requests import HTTPConnection

from chaser import errors
from chaser.api.auth import principal_from, refuse_sandbox_origin, uses_query_token
from chaser.api.client_socket import StarletteClientSocket
from chaser.api.deps import ExecWrite, ServicesDep, SessionsRead, SessionsWrite, services_of
from chaser.api.forward_response import ProxiedResponse
from chaser.api.ratelimit import charge
from chaser.api.routes import ERROR_DESCRIPTIONS, SESSION_ERROR_RESPONSES
from chaser.api.urls import forward_url, session_host_forward_url
from chaser.service import forward as fwd
from chaser.service.keys import Principal
from chaser.service.live import LiveSession

# Taken as text so a bad port gets our own 400 message (fwd.check_port); documented as what it must be.
PortParam = Annotated[str, Path(json_schema_extra={"type": "integer", "minimum": 1, "maximum": 65535})]

router = APIRouter(tags=["forwarding"])
api_router = APIRouter(prefix="/v1/sessions", tags=["forwarding"], responses=SESSION_ERROR_RESPONSES)
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
SCOPE = fwd.SCOPE
PATH_STYLE_LINK = ("a ?token= login link works only on a session's own host-style address "
                   "({id}.<base domain>/forward/{port}/, CHASER_BASE_DOMAIN): path-style forwards are served on the "
                   "API's origin, where browsers get no login; send 'Authorization: Bearer <key>' or use "
                   "`chaser forward`")
LINK_METHODS = ("a ?token= login link is a GET or HEAD (it answers a redirect that sets the session's cookie); "
                "send 'Authorization: Bearer <key>' with other methods")
PATH_STYLE_MISSING = ("missing API key: send 'Authorization: Bearer sk_…' (path-style forwards take no cookie: "
                      "browsers use the session's host-style address with ?token= once, or `chaser forward`)")
HOST_STYLE_MISSING = "missing API key: send 'Authorization: Bearer sk_…', or open this address once with ?token=<key>"


def forwarding_of(connection: HTTPConnection) -> fwd.ForwardService:
    return services_of(connection).forwarding


def is_host_style(connection: HTTPConnection) -> bool:
    return bool(connection.scope.get("chaser_host_style"))


def prefix_of(connection: HTTPConnection, session_id: str, port: int) -> str:
    """The URL prefix of this forward, path or host style."""
    return f"/forward/{port}" if is_host_style(connection) else f"/s/{session_id}/forward/{port}"


def upstream_target(connection: HTTPConnection, *, drop_token: bool) -> str:
    """The path (still percent-encoded) and query after `/s/{id}/forward/{port}`."""
    raw: bytes = connection.scope.get("raw_path") or connection.scope["path"].encode()
    parts = raw.split(b"?", 1)[0].split(b"/", 5)  # '', 's', id, 'forward', port, rest
    target = "/" + (parts[5].decode("latin-1") if len(parts) > 5 else "")
    query: str = connection.scope.get("query_string", b"").decode("latin-1")
    if drop_token and query:
        query = fwd.query_without(query, "token")
    return target + (f"?{query}" if query else "")


def check_own_origin(connection: HTTPConnection) -> None:
    """A request carrying a session's login cookie must come from that session's own
    origin: a browser sends `Origin` on every cross-origin fetch, form post and
    WebSocket, and a page of a sibling session (same site!) would otherwise ride on
    the cookie. No `Origin` (a link followed, a same-origin GET) is fine."""
    origin = connection.headers.get("origin")
    if origin is None:
        return
    host = (connection.headers.get("host") or "").lower()
    try:
        netloc = urlsplit(origin.strip().lower()).netloc
    except ValueError:
        netloc = ""
    if not host or netloc != host:
        raise errors.Forbidden(f"this session's login cookie is not accepted from another origin (Origin: {origin})")


async def gateway_live(connection: HTTPConnection, session_id: str, port: int, *,
                       websocket: bool) -> tuple[LiveSession, Principal | None]:
    """(live session, the principal of a `?token=` login link to exchange for the
    cookie, if this is one) after the gateway's access rules."""
    keys = services_of(connection).keys
    forwarding = forwarding_of(connection)
    host_style = is_host_style(connection)
    headers, query = connection.headers, connection.query_params
    token_used = not forwarding.public.is_public(session_id, port) and uses_query_token(headers, query)
    if token_used and not websocket:
        if not host_style:
            raise errors.InvalidRequest(PATH_STYLE_LINK)
        if connection.scope.get("method") not in ("GET", "HEAD"):
            raise errors.InvalidRequest(LINK_METHODS)
    caller: Principal | None = None  # who pays (a public port: nobody)
    via_link = False  # a login link, to exchange for the cookie

    def authenticate() -> Principal:
        nonlocal caller, via_link
        link_token = query.get("token") if token_used and host_style else None
        if link_token is not None and forwarding.cookies.is_link(link_token):
            caller, via_link = forwarding.link_principal(link_token, session_id), True
        elif headers.get("authorization") is not None or token_used:
            caller, via_link = principal_from(keys, headers, query=query, scope=SCOPE), token_used
        elif not host_style:
            raise errors.Unauthorized(PATH_STYLE_MISSING)
        else:
            tokens = fwd.cookie_values(headers.get("cookie"))
            if not tokens:
                raise errors.Unauthorized(HOST_STYLE_MISSING)
            principal = forwarding.cookie_principal(tokens, session_id)
            check_own_origin(connection)
            caller = principal
        return caller

    try:
        live = await forwarding.gateway_session(session_id, port, authenticate)
    finally:
        if caller is not None:  # the key behind a header, ?token=, link or cookie pays
            await charge(connection, caller)
    return live, (caller if via_link else None)


def forwarded_request(connection: HTTPConnection, session_id: str, port: int, *, token_used: bool, method: str,
                      scheme: str, request: Request | None = None) -> fwd.ForwardedRequest:
    return fwd.ForwardedRequest(
        method=method, target=upstream_target(connection, drop_token=token_used),
        headers=list(connection.scope.get("headers", [])), scheme=scheme,
        client_host=connection.client.host if connection.client else None,
        body=request.stream() if request is not None else None, prefix=prefix_of(connection, session_id, port),
        api_origin=not is_host_style(connection))


# --- HTTP -------------------------------------------------------------------------------
@router.api_route("/s/{session_id}/forward/{port}", methods=ALL_METHODS, include_in_schema=False)
async def forward_root(session_id: str, port: str, request: Request) -> Response:
    fwd.check_port(port)
    query = request.url.query
    path = request.scope.get("chaser_original_path", request.url.path)  # host style: `/forward/{port}`
    return RedirectResponse(path + "/" + (f"?{query}" if query else ""), status_code=307)


async def forward_http(session_id: str, port: PortParam, path: str, request: Request) -> Response:
    port_number = fwd.check_port(port)
    live, link = await gateway_live(request, session_id, port_number, websocket=False)
    if link is not None:
        # One-time login link (host style, GET/HEAD): the key buys a per-session token in a
        # host-only HttpOnly cookie, and leaves the URL before any page of the sandbox sees it.
        forwarding = forwarding_of(request)
        query = fwd.query_without(request.url.query, "token")
        location = request.scope.get("chaser_original_path", request.url.path) + (f"?{query}" if query else "")
        response = RedirectResponse(location, status_code=302)
        response.set_cookie(fwd.COOKIE_NAME, forwarding.login_cookie(link, session_id), httponly=True, path="/",
                            max_age=forwarding.cookies.ttl_s, samesite="lax", secure=request.url.scheme == "https")
        response.headers["cache-control"] = "no-store"
        response.headers["referrer-policy"] = "no-referrer"
        return response
    # Past the access rules a `token` parameter is not ours (public port, or a Bearer header): it stays.
    forwarded = forwarded_request(request, session_id, port_number, token_used=False, method=request.method,
                                  scheme=request.url.scheme, request=request)
    return ProxiedResponse(await forwarding_of(request).http(live, port_number, forwarded))


def _relayed(description: str) -> dict[str, Any]:
    """A gateway answer: its own refusal (`{"code", "message"}`), or whatever the sandboxed server answered."""
    return {"description": description, "content": {
        "application/json": {"schema": {"anyOf": [{"$ref": "#/components/schemas/ErrorPublic"},
                                                  {"description": "a JSON answer of the sandboxed server"}]}},
        "*/*": {"schema": {"description": "an answer of the sandboxed server, relayed as is"}}}}


RELAYED = " (or the sandboxed server's own answer with this status, relayed as is)"
GATEWAY_RESPONSES: dict[int | str, Any] = {
    200: _relayed("The sandboxed server's answer, relayed as is"),
    302: {"description": "A one-time login link on a host-style address (`?token=<key>`, GET and HEAD): to the "
                         "same URL without `token`, with a per-session token (not the key) in an HttpOnly, host-only "
                         "`chaser_token` cookie" + RELAYED,
          "headers": {"Location": {"schema": {"type": "string"}}, "Set-Cookie": {"schema": {"type": "string"}}}},
    400: _relayed("`invalid_request`: `port` is not an integer in 1..65535, or a `?token=` login link on a "
                  "path-style address or with a method other than GET/HEAD" + RELAYED),
    401: _relayed(ERROR_DESCRIPTIONS[401] + "; a public port needs no key" + RELAYED),
    403: _relayed("The key lacks `exec.write`, the account is not its own, or the session's login cookie came "
                  "with another origin's `Origin` (`forbidden`)" + RELAYED),
    404: _relayed("`session_not_found`, or the session is not running (a missing site)" + RELAYED),
    502: _relayed("`port_not_listening`: nothing listens on that port inside the sandbox" + RELAYED),
    503: _relayed(ERROR_DESCRIPTIONS[503] + RELAYED),
    "default": _relayed("Any other status the sandboxed server answers, relayed as is"),
}

for _method in ALL_METHODS:  # one route per method: distinct OpenAPI operation ids
    router.add_api_route("/s/{session_id}/forward/{port}/{path:path}", forward_http, methods=[_method],
                         operation_id=f"forward_{_method.lower()}", response_class=Response,
                         responses=GATEWAY_RESPONSES if _method != "GET" else {
                             101: {"description": "Switching Protocols: a WebSocket to the sandboxed server"},
                             **GATEWAY_RESPONSES},
                         summary="Reverse proxy to 127.0.0.1:{port} inside the sandbox (HTTP and WebSocket)")


# --- WebSocket through the gateway ---------------------------------------------------------
@router.websocket("/s/{session_id}/forward/{port}/{path:path}")
async def forward_websocket(websocket: WebSocket, session_id: str, port: str, path: str) -> None:
    client = StarletteClientSocket(websocket)
    try:
        port_number = fwd.check_port(port)
        live, _ = await gateway_live(websocket, session_id, port_number, websocket=True)
    except Exception as exc:  # noqa: BLE001 - every refusal is an HTTP answer
        await client.deny(exc)
        return
    token_used = (not forwarding_of(websocket).public.is_public(session_id, port_number)
                  and uses_query_token(websocket.headers, websocket.query_params))
    forwarded = forwarded_request(websocket, session_id, port_number, token_used=token_used, method="GET",
                                  scheme="https" if websocket.url.scheme == "wss" else "http")
    await forwarding_of(websocket).websocket(live, port_number, forwarded, client)


# --- raw TCP tunnel (chaser forward) --------------------------------------------------------
@api_router.websocket("/{session_id}/tunnel/{port}")
async def tunnel(websocket: WebSocket, session_id: str, port: str) -> None:
    """A raw TCP connection to 127.0.0.1:{port} in the sandbox: binary frames = bytes."""
    client = StarletteClientSocket(websocket)
    services = services_of(websocket)
    try:
        refuse_sandbox_origin(websocket.headers, services.settings.base_domain)
        principal = principal_from(services.keys, websocket.headers, query=websocket.query_params, scope=SCOPE)
        await charge(websocket, principal)
        port_number = fwd.check_port(port)
        live = await services.sessions.live_session(principal, session_id)
    except Exception as exc:  # noqa: BLE001 - every refusal is an HTTP answer
        await client.deny(exc)
        return
    await forwarding_of(websocket).tunnel(live, port_number, client)


# --- login links ------------------------------------------------------------------------------
class LoginLinkPublic(BaseModel):
    session_id: str
    port: int
    url: str
    expires_in: int


@api_router.post("/{session_id}/ports/{port}/link", response_model=LoginLinkPublic,
                 summary="A short-lived browser login link to a forwarded port (host style)")
async def login_link(session_id: str, port: PortParam, request: Request, services: ServicesDep,
                     principal: ExecWrite) -> LoginLinkPublic:
    """`{id}.{CHASER_BASE_DOMAIN}/forward/{port}/?token=<link token>`: opening it within
    60 s sets the session's login cookie, so a browser gets in without the API key in any
    URL. 400 `invalid_request` when host-style forwarding is off (no `CHASER_BASE_DOMAIN`)."""
    port_number = fwd.check_port(port)
    domain = services.settings.base_domain
    if not domain:
        raise errors.InvalidRequest("login links need host-style forwarding: set CHASER_BASE_DOMAIN on the server")
    token = await forwarding_of(request).login_link(principal, session_id)
    return LoginLinkPublic(session_id=session_id, port=port_number, expires_in=fwd.LINK_TTL_S,
                           url=session_host_forward_url(request, session_id, port_number, domain) + f"?token={token}")


# --- public ports -----------------------------------------------------------------------------
class PublicBody(BaseModel):
    public: bool = True


@api_router.post("/{session_id}/ports/{port}/public",
                 summary="Open (or close) a forwarded port to requests without an API key")
async def set_public(session_id: str, port: PortParam, request: Request, services: ServicesDep,
                     principal: SessionsWrite, body: PublicBody | None = Body(default=None)) -> dict[str, Any]:
    port_number = fwd.check_port(port)
    public = True if body is None else body.public
    await forwarding_of(request).set_public(principal, session_id, port_number, public)
    return {"session_id": session_id, "port": port_number, "public": public,
            "url": forward_url(request, session_id, port_number)}


@api_router.get("/{session_id}/ports", summary="Ports opened to the public")
async def list_ports(session_id: str, request: Request, services: ServicesDep, principal: SessionsRead
                     ) -> dict[str, Any]:
    ports = await forwarding_of(request).public_ports(principal, session_id)
    return {"ports": [{"port": p, "public": True, "url": forward_url(request, session_id, p)} for p in ports]}
