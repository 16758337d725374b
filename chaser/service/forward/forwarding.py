"""The gateway's rules and flows: who may reach a forwarded port, and the three
ways to reach it (HTTP, WebSocket, raw TCP tunnel), each over one agent relay
of a running session."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack

from chaser import errors
from chaser.service.client_socket import ClientSocket
from chaser.service.forward.cookies import ForwardCookies, load_or_create_secret
from chaser.service.forward.headers import header_value, upstream_request_headers
from chaser.service.forward.http_proxy import ForwardedRequest, UpstreamResponse, proxy_http
from chaser.service.forward.ports import PublicPorts
from chaser.service.forward.relay import RelayStream, open_relay, pipe_client_to_relay
from chaser.service.forward.ws_proxy import UpstreamWebSocket
from chaser.service.keys import Principal
from chaser.service.live import LiveSession
from chaser.service.sessions import SessionManager
from chaser.store import ApiKey

__all__ = ["ForwardService"]


SCOPE = "exec.write"  # what reaching a forwarded port (or a tunnel) takes


class ForwardService:
    def __init__(self, sessions: SessionManager, cookies: ForwardCookies | None = None) -> None:
        """`cookies` defaults to the server secret of `$CHASER_HOME` (read, or made, here: at
        start-up, off the event loop), with cookies living as long as a session can."""
        self.sessions = sessions
        settings = sessions.settings
        self.cookies = cookies or ForwardCookies(load_or_create_secret(settings.home), settings.session_max_lifetime_s)
        self.public = PublicPorts(sessions)

    # --- access ----------------------------------------------------------------------
    async def gateway_session(self, session_id: str, port: int, authenticate: Callable[[], Principal]) -> LiveSession:
        """The running session behind a gateway request: a public port needs no key,
        else `authenticate()` names the caller. A session that is unknown or not
        running is a 404 here (a missing site), not the API's 409."""
        if self.public.is_public(session_id, port):
            principal = Principal(key_id="public", account_id=self.sessions.live[session_id].account_id)
        else:
            principal = authenticate()
        try:
            return await self.sessions.live_session(principal, session_id)
        except errors.Conflict as exc:
            raise errors.NotFound(exc.message, code=exc.code) from None

    def login_cookie(self, principal: Principal, session_id: str) -> str:
        """The per-session token a host-style login link sets as its cookie (call it once
        `gateway_session` has accepted `principal` for `session_id`)."""
        return self.cookies.issue(session_id, principal.key_id)

    def cookie_principal(self, tokens: list[str], session_id: str) -> Principal:
        """The principal behind a login cookie of `session_id` (the first valid of `tokens`):
        Unauthorized when none is authentic, unexpired and for this session, or its key is
        revoked; Forbidden when the key lacks the scope."""
        failure: errors.ChaserError = errors.Unauthorized("missing login cookie")
        for token in tokens:
            try:
                principal = self._key_principal(self.cookies.key_id(token, session_id))
            except errors.Unauthorized as exc:
                failure = exc
                continue
            principal.require(SCOPE)
            return principal
        raise failure

    async def login_link(self, principal: Principal, session_id: str) -> str:
        """A short-lived login link token for `session_id` (running, the caller's, with `exec.write`)."""
        principal.require(SCOPE)
        await self.sessions.live_session(principal, session_id)
        return self.cookies.issue_link(session_id, principal.key_id)

    def link_principal(self, token: str, session_id: str) -> Principal:
        """The principal of a login link's token for `session_id`; Unauthorized when it is
        not authentic, expired, for another session, or its key is revoked."""
        principal = self._key_principal(self.cookies.link_key_id(token, session_id))
        principal.require(SCOPE)
        return principal

    def _key_principal(self, key_id: str) -> Principal:
        """The principal of the key a login cookie names; Unauthorized once it is revoked or gone."""
        with self.sessions.db.session() as s:
            row = s.get(ApiKey, key_id)
            if row is None or row.revoked_at is not None:
                raise errors.Unauthorized("the API key behind this login cookie is revoked")
            return Principal(key_id=row.id, account_id=row.account_id,
                             scopes=frozenset(row.scopes or []), full_access=row.full_access)

    async def set_public(self, principal: Principal, session_id: str, port: int, public: bool) -> None:
        await self.sessions.live_session(principal, session_id)
        self.public.set(session_id, port, public)

    async def public_ports(self, principal: Principal, session_id: str) -> list[int]:
        await self.sessions.live_session(principal, session_id)
        return self.public.ports(session_id)

    # --- the three ways in --------------------------------------------------------------
    async def http(self, live: LiveSession, port: int, request: ForwardedRequest) -> UpstreamResponse:
        """Forward one HTTP request; answers once the upstream's response head is in.
        The response holds the session and the relay until its `aclose`."""
        stack = AsyncExitStack()
        try:
            vm = await stack.enter_async_context(self.sessions.using(live))
            relay = await stack.enter_async_context(open_relay(vm, port))
        except BaseException:
            await stack.aclose()
            raise
        return await proxy_http(relay, request, port=port, stack=stack)

    async def websocket(self, live: LiveSession, port: int, request: ForwardedRequest, client: ClientSocket) -> None:
        """Open the upstream WebSocket (the client's upgrade is refused if that
        fails), accept the client's with the upstream's subprotocol, and pump."""
        async with AsyncExitStack() as stack:
            try:
                vm = await stack.enter_async_context(self.sessions.using(live))
                upstream = UpstreamWebSocket(await stack.enter_async_context(open_relay(vm, port)))
                headers = upstream_request_headers(request.headers, port=port, prefix=request.prefix, websocket=True,
                                                   scheme=request.scheme, client_host=request.client_host)
                offered = header_value(request.headers, "sec-websocket-protocol") or ""
                subprotocols = [p.strip() for p in offered.split(",") if p.strip()]
                await upstream.handshake(port, request.target, headers, subprotocols)
            except Exception as exc:  # noqa: BLE001 - every refusal is an HTTP answer
                await client.deny(exc)
                return
            await client.accept(subprotocol=upstream.subprotocol)
            await upstream.pump(client)

    async def tunnel(self, live: LiveSession, port: int, client: ClientSocket) -> None:
        """A raw TCP connection to 127.0.0.1:port in the sandbox: client frames = bytes."""
        async with AsyncExitStack() as stack:
            try:
                vm = await stack.enter_async_context(self.sessions.using(live))
                relay: RelayStream = await stack.enter_async_context(open_relay(vm, port))
            except Exception as exc:  # noqa: BLE001 - every refusal is an HTTP answer
                await client.deny(exc)
                return
            await client.accept()
            await pipe_client_to_relay(client, relay)
