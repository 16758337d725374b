"""Request rate limits per API key: a token bucket per key id.

Each key has a bucket of `burst` tokens, refilled at `per_minute / 60` tokens a
second; every authenticated request takes one (a stream or WebSocket: once, when
it opens). An empty bucket refuses with the seconds until the next token.

`RateLimiter` is the seam: this process keeps its buckets in memory
(`TokenBucketLimiter`), which is right for one API process. API replicas need a
shared implementation (a database or Redis holding the same bucket per key id)
behind the same `acquire`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from chaser.config import Settings

__all__ = ["RateDecision", "RateLimiter", "TokenBucketLimiter", "rate_limiter_for"]

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
            else:
                bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
                bucket.at = now
            allowed = bucket.tokens >= 1.0
            if allowed:
                bucket.tokens -= 1.0
            retry_after = 0 if allowed else max(1, math.ceil((1.0 - bucket.tokens) / self.rate))
            return RateDecision(allowed=allowed, limit=self.burst, remaining=int(bucket.tokens),
                                reset_s=math.ceil((self.burst - bucket.tokens) / self.rate),
                                retry_after_s=retry_after)

    def _prune(self, now: float) -> None:
        for key_id, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.at) * self.rate >= self.burst:
                del self._buckets[key_id]


def rate_limiter_for(settings: Settings) -> RateLimiter:
    if settings.rate_limit_per_minute == 0:
        return NoRateLimit()
    return TokenBucketLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
