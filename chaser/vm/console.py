"""The guest's serial console, read from QEMU's stdout into a bounded buffer.

QEMU never writes the console to a file: untrusted code inside the guest can
print to it forever, and the host keeps only the newest `max_bytes`."""

from __future__ import annotations

import asyncio


class ConsoleLog:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        self.total_bytes = 0  # everything the guest wrote, kept or not
        self._task: asyncio.Task[None] | None = None

    def follow(self, stream: asyncio.StreamReader) -> None:
        self._task = asyncio.ensure_future(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self.append(chunk)

    def append(self, chunk: bytes) -> None:
        self.total_bytes += len(chunk)
        self._buffer += chunk
        excess = len(self._buffer) - self.max_bytes
        if excess > 0:
            del self._buffer[:excess]

    def tail(self, size: int = 1500) -> str:
        return bytes(self._buffer[-size:]).decode(errors="replace")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
