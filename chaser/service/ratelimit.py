"""Request rate limits per API key: a token bucket per key id.

Each key has a bucket of `burst` tokens, refilled at `per_minute / 60` tokens a
second; every authenticated request takes one (a stream or WebSocket: once, when
it opens). An empty bucket refuses with the seconds until the next token.

`RateLimiter` is the seam. One API process keeps its buckets in memory
(`TokenBucketLimiter`). API replicas (CHASER_LOCAL_RUNTIME=false) share each key's
bucket in the database (`DatabaseTokenBucketLimiter`: the row locked for the
update, so two replicas' requests are taken one after the other). A `chaser node`
charges nothing: its requests come through a replica, which charged them.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.exc import IntegrityError

from chaser.config import Settings
from chaser.store import Database
from chaser.store.tables import RateBucket

__all__ = ["DatabaseTokenBucketLimiter", "NoRateLimit", "RateDecision", "RateLimiter", "TokenBucketLimiter",
           "rate_limiter_for"]

# Past this many buckets, full ones are dropped (a full bucket is the same as none).
PRUNE_AT = 10_000


@dataclass(frozen=True, slots=True)
class RateDecision:
    """One request's answer: allowed or not, and the `x-ratelimit-*` values for its response."""

    allowed: bool
    limit: int  # the bucket size (`x-ratelimit-limit`)
    remaining: int  # whole tokens left after this request (`x-ratelimit-remaining`)
    reset_s: int  # seconds until the bucket is full again (`x-ratelimit-reset`)
    retry_after_s: int  # seconds until a request would pass (`Retry-After`, when refused); 0 when allowed

    def headers(self) -> dict[str, str]:
        headers = {"x-ratelimit-limit": str(self.limit), "x-ratelimit-remaining": str(self.remaining),
                   "x-ratelimit-reset": str(self.reset_s)}
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_s)
        return headers


class RateLimiter(Protocol):
    async def acquire(self, key_id: str) -> RateDecision | None:
        """Take one request from `key_id`'s budget; None when rate limiting is off."""
        ...


class NoRateLimit:
    async def acquire(self, key_id: str) -> RateDecision | None:
        del key_id
        return None


@dataclass
class _Bucket:
    tokens: float
    at: float


class TokenBucketLimiter:
    """In-process buckets. `clock` (seconds, monotonic) is replaceable for tests."""

    def __init__(self, per_minute: int, burst: int | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive (use NoRateLimit to turn limits off)")
        self.rate = per_minute / 60.0  # tokens per second
        self.burst = burst or per_minute
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    async def acquire(self, key_id: str) -> RateDecision:
        return self.take(key_id)

    def take(self, key_id: str) -> RateDecision:
        with self._lock:
            now = self.clock()
            bucket = self._buckets.get(key_id)
            if bucket is None:
                if len(self._buckets) >= PRUNE_AT:
                    self._prune(now)
                bucket = self._buckets[key_id] = _Bucket(float(self.burst), now)
            bucket.tokens, decision = take_one(bucket.tokens, bucket.at, now, rate=self.rate, burst=self.burst)
            bucket.at = now
            return decision

    def _prune(self, now: float) -> None:
        for key_id, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.at) * self.rate >= self.burst:
                del self._buckets[key_id]


def take_one(tokens: float, at: float, now: float, *, rate: float, burst: int) -> tuple[float, RateDecision]:
    """A bucket holding `tokens` at time `at`, refilled to `now`, asked for one: (tokens left, decision)."""
    tokens = min(float(burst), tokens + max(0.0, now - at) * rate)
    allowed = tokens >= 1.0
    if allowed:
        tokens -= 1.0
    retry_after = 0 if allowed else max(1, math.ceil((1.0 - tokens) / rate))
    return tokens, RateDecision(allowed=allowed, limit=burst, remaining=int(tokens),
                                reset_s=math.ceil((burst - tokens) / rate), retry_after_s=retry_after)


class DatabaseTokenBucketLimiter:
    """The same buckets in the shared database (`rate_buckets`): one short transaction a request,
    in a thread. `clock`: seconds since the epoch (every replica's must agree: NTP)."""

    def __init__(self, db: Database, per_minute: int, burst: int | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive (use NoRateLimit to turn limits off)")
        self.db = db
        self.rate = per_minute / 60.0
        self.burst = burst or per_minute
        self.clock = clock

    async def acquire(self, key_id: str) -> RateDecision:
        return await asyncio.to_thread(self.take, key_id)

    def take(self, key_id: str) -> RateDecision:
        for _ in range(3):  # a first request of the key from two replicas at once: one insert wins
            try:
                return self._take(key_id)
            except IntegrityError:
                continue
        return self._take(key_id)

    def _take(self, key_id: str) -> RateDecision:
        with self.db.session() as s:
            row = s.get(RateBucket, key_id, with_for_update=True)  # held until this transaction ends
            now = self.clock()
            if row is None:
                row = RateBucket(key_id=key_id, tokens=float(self.burst), at=now)
                s.add(row)
            row.tokens, decision = take_one(row.tokens, row.at, now, rate=self.rate, burst=self.burst)
            row.at = max(row.at, now)
            return decision


def rate_limiter_for(settings: Settings, db: Database | None = None, *, node: bool = False) -> RateLimiter:
    """Per process role: none on a node (the replica charged the request), the database's on an
    API replica, in memory otherwise."""
    if settings.rate_limit_per_minute == 0 or node:
        return NoRateLimit()
    if not settings.local_runtime and db is not None:
        return DatabaseTokenBucketLimiter(db, settings.rate_limit_per_minute, settings.rate_limit_burst)
    return TokenBucketLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
