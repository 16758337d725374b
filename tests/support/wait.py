"""Waiting on a condition, with a deadline: what tests use instead of a fixed sleep.

`wait_until(predicate)` calls `predicate` until it returns something truthy and
returns that value; past `timeout` seconds it fails the test with `message` and
the last value seen. `async_wait_until` is the same inside an event loop, and
its predicate may be a coroutine function.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold before the deadline (an assertion failure for pytest)."""


def _failure(message: str | None, timeout: float, last: Any, error: BaseException | None) -> WaitTimeout:
    text = f"{message or 'condition not met'} within {timeout}s (last value {last!r})"
    if error is not None:
        text += f"; last error {error!r}"
    return WaitTimeout(text)


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, *, interval: float = 0.05,
               message: str | None = None, ignore: tuple[type[BaseException], ...] = ()) -> T:
    """Poll `predicate` every `interval` seconds until it is truthy; return its value.

    Exceptions of the types in `ignore` count as "not yet" (e.g. a connection
    refused while a server starts); anything else propagates at once."""
    deadline = time.monotonic() + timeout
    last: Any = None
    error: BaseException | None = None
    while True:
        try:
            last = predicate()
            error = None
        except ignore as exc:
            last, error = None, exc
        if last:
            return last
        if time.monotonic() >= deadline:
            raise _failure(message, timeout, last, error)
        time.sleep(interval)


async def async_wait_until(predicate: Callable[[], T | Awaitable[T]], timeout: float = 10.0, *,
                           interval: float = 0.05, message: str | None = None,
                           ignore: tuple[type[BaseException], ...] = ()) -> T:
    """`wait_until` for a running event loop: the polls yield to it."""
    deadline = time.monotonic() + timeout
    last: Any = None
    error: BaseException | None = None
    while True:
        try:
            last = predicate()
            if inspect.isawaitable(last):
                last = await last
            error = None
        except ignore as exc:
            last, error = None, exc
        if last:
            return last
        if time.monotonic() >= deadline:
            raise _failure(message, timeout, last, error)
        await asyncio.sleep(interval)
