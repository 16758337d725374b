"""File locks of the image store (`.locks/<name>.lock`, flock): one build per digest across
processes, one writer of refs.json at a time.

`hold` is for coroutines: an asyncio lock serialises the holders of one process (per
event loop), the lock file is opened in a worker thread, and the flock is taken with
LOCK_NB attempts between sleeps, so the event loop never waits on another process (a
blocking flock in a thread could not be abandoned on cancellation, and would keep the
loop's executor from shutting down while another process holds the lock).
`hold_sync` blocks; it is for worker threads and for processes without an event loop.
flock locks belong to the open file, so the two kinds exclude each other within one
process as well as across processes.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

POLL_S = 0.05


class FileLocks:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._async: dict[tuple[int, str], asyncio.Lock] = {}

    def _open(self, name: str) -> int:
        self.dir.mkdir(parents=True, exist_ok=True)
        return os.open(self.dir / f"{name}.lock", os.O_CREAT | os.O_RDWR, 0o644)

    async def _open_async(self, name: str) -> int:
        opening = asyncio.ensure_future(asyncio.to_thread(self._open, name))
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The thread finishes regardless: close what it opens.
            opening.add_done_callback(_close_opened)
            raise

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        key = (id(asyncio.get_running_loop()), name)
        lock = self._async.setdefault(key, asyncio.Lock())
        async with lock:
            fd = await self._open_async(name)
            try:
                # Held by another process (or a worker thread): there is no event to wait for, so poll.
                while not _try_lock(fd):  # noqa: ASYNC110
                    await asyncio.sleep(POLL_S)
                yield
            finally:
                os.close(fd)

    @contextmanager
    def hold_sync(self, name: str, *, blocking: bool = True) -> Iterator[bool]:
        """Yields True when held (always when blocking); False if busy."""
        fd = self._open(name)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)


def _try_lock(fd: int) -> bool:
    """One LOCK_NB attempt: returns at once, held or not."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _close_opened(opening: asyncio.Future[int]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        os.close(opening.result())
