"""Rate limits per API key, where the API authenticates (chaser/service/ratelimit.py keeps the buckets).

`charge(connection, principal)` takes one request from the key's budget — once per
request, after the key was accepted (a refused key costs nothing) — and raises
`RateLimited` (429, `Retry-After` and `x-ratelimit-*`) when it is spent. Every route's
key check calls it (`deps.current_principal`, the PTY and tunnel WebSockets, the
gateway's key and login cookie); a stream or WebSocket is charged once, at open.
`RateLimitHeadersMiddleware` puts the `x-ratelimit-*` headers on the HTTP answer.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chaser import errors
from chaser.service.keys import Principal
from chaser.service.ratelimit import RateDecision, RateLimiter

__all__ = ["RateLimitHeadersMiddleware", "charge", "check_rate"]

STATE_KEY = "chaser_rate_limit"


def refusal(decision: RateDecision) -> errors.RateLimited:
    return errors.RateLimited(
        f"rate limit of this API key reached ({decision.limit} requests at once, then CHASER_RATE_LIMIT_PER_MINUTE "
        f"per minute); retry in {decision.retry_after_s} s", headers=decision.headers())


async def check_rate(limiter: RateLimiter, key_id: str) -> RateDecision | None:
    """One request of `key_id`: its decision (None: no limits), RateLimited when refused."""
    decision = await limiter.acquire(key_id)
    if decision is not None and not decision.allowed:
        raise refusal(decision)
    return decision


async def charge(connection: HTTPConnection, principal: Principal) -> None:
    state = connection.scope.setdefault("state", {})
    if STATE_KEY in state:  # this request was charged already
        return
    limiter: RateLimiter = connection.app.state.services.rate_limiter
    decision = await limiter.acquire(principal.key_id)
    state[STATE_KEY] = decision
    if decision is not None and not decision.allowed:
        raise refusal(decision)


class RateLimitHeadersMiddleware:
    """`x-ratelimit-limit`, `-remaining`, `-reset` on the answer of every charged HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})  # shared with the copies of `scope` further in

        async def send_with_limits(message: Message) -> None:
            decision = state.get(STATE_KEY)
            if message["type"] == "http.response.start" and decision is not None:
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers += [(name.encode(), value.encode()) for name, value in decision.headers().items()
                            if name.lower().encode() not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_limits)
