"""Small asyncio helpers shared by every layer (service, API, CLI); imports nothing of Chaser."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["first_to_finish"]


async def first_to_finish(*coroutines: Coroutine[Any, Any, object], name: str | None = None) -> int:
    """Run `coroutines` concurrently until one of them ends, then cancel the
    others and wait until they are gone.

    Returns the position of the one that ended (the first by position when
    several ended together) and raises its exception if it failed. The others'
    results and exceptions are dropped. Cancelling the caller cancels them all.
    This is the loop of every two-way pump: whichever direction ends first ends
    the exchange.
    """
    if not coroutines:
        raise ValueError("first_to_finish needs at least one coroutine")
    tasks = [asyncio.create_task(coroutine, name=f"{name}[{i}]" if name else None)
             for i, coroutine in enumerate(coroutines)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    winner = min(tasks.index(task) for task in done)
    tasks[winner].result()
    return winner
