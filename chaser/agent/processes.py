"""User processes: spawning, bounded output logs, stdin, signals, waiting."""

import asyncio
import base64
import os
import secrets
import signal
import subprocess
import time
from collections import OrderedDict

from .errors import bad_request, conflict, not_found
from .protocol import PROCESS_OUTPUT_RING_BYTES

# Finished processes are kept for inspection, but not forever.
MAX_FINISHED_KEPT = 256


class OutputRing:
    """The last `capacity` bytes of a stream, addressed by absolute offsets."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.buf = bytearray()
        self.total = 0  # bytes ever written

    @property
    def start_offset(self) -> int:
        return self.total - len(self.buf)

    def append(self, data: bytes) -> None:
        self.total += len(data)
        self.buf += data
        excess = len(self.buf) - self.capacity
        if excess > 0:
            del self.buf[:excess]  # bytearray deletes from the front cheaply

    def read(self, offset: int, limit: int):
        offset = max(offset, self.start_offset)
        rel = offset - self.start_offset
        return offset, bytes(self.buf[rel:rel + limit])

    def tail(self, n: int) -> bytes:
        return bytes(self.buf[-n:]) if n > 0 else b""


def parse_signal(value) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return int(signal.Signals(value))
        except ValueError:
            pass
    elif isinstance(value, str):
        name = value.strip().upper()
        if name.isascii() and name.isdecimal():
            return parse_signal(int(name))
        if not name.startswith("SIG"):
            name = "SIG" + name
        sig = getattr(signal.Signals, name, None)
        if sig is not None:
            return int(sig)
    raise bad_request(f"invalid signal {value!r}", code="invalid_signal")


class Process:
    def __init__(self, proc, argv, command, cwd, user, ring_bytes):
        self.id = "c-" + secrets.token_hex(6)
        self.proc = proc
        self.pid = proc.pid
        self.command = command
        self.argv = argv
        self.cwd = cwd
        self.user = user
        self.ring = OutputRing(ring_bytes)
        self.started_at = time.time()
        self.finished_at: float | None = None
        self.returncode: int | None = None
        self.timed_out = False
        self.output_closed = False
        self.stdin_closed = False
        # Replaced on every change; waiters hold the old one (no busy polling).
        self._changed = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read_output())
        self._waiter = asyncio.ensure_future(self._wait_exit())

    def _notify(self):
        self._changed.set()
        self._changed = asyncio.Event()

    async def _read_output(self):
        try:
            while True:
                data = await self.proc.stdout.read(65536)
                if not data:
                    break
                self.ring.append(data)
                self._notify()
        finally:
            self.output_closed = True
            self._notify()

    async def _wait_exit(self):
        self.returncode = await self.proc.wait()
        self.finished_at = time.time()
        self._notify()

    @property
    def running(self) -> bool:
        return self.returncode is None

    @property
    def status(self) -> str:
        if self.returncode is None:
            return "running"
        if self.timed_out:
            return "timed_out"
        return "killed" if self.returncode < 0 else "completed"

    def info(self) -> dict:
        rc = self.returncode
        return {
            "id": self.id, "pid": self.pid, "command": self.command, "cwd": self.cwd,
            "user": self.user, "status": self.status, "exit_code": rc,
            "signal": -rc if rc is not None and rc < 0 else None,
            "started_at": self.started_at, "finished_at": self.finished_at,
            "output_bytes": self.ring.total, "start_offset": self.ring.start_offset,
        }

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.pid, sig)  # each process leads its own session/group
        except ProcessLookupError:
            pass
        except PermissionError:
            pass

    async def wait_change(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    async def wait_exit(self, timeout=None) -> bool:
        try:
            await asyncio.wait_for(asyncio.shield(self._waiter), timeout)
            return True
        except TimeoutError:
            return False

    async def wait_output_closed(self, timeout: float) -> None:
        # A background grandchild may keep the pipe open: don't wait forever.
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        except TimeoutError:
            pass

    async def write_stdin(self, data: bytes, close: bool) -> int:
        if not self.running:
            raise conflict("process has finished")
        if self.stdin_closed or self.proc.stdin is None:
            raise conflict("stdin is closed")
        try:
            if data:
                self.proc.stdin.write(data)
                await self.proc.stdin.drain()
            if close:
                self.stdin_closed = True
                self.proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            self.stdin_closed = True
            raise conflict("process closed its stdin") from None
        return len(data)


class ProcessManager:
    def __init__(self) -> None:
        self.processes: OrderedDict[str, Process] = OrderedDict()

    async def spawn(self, argv, command, cwd, user_name, env, preexec, ring_bytes=PROCESS_OUTPUT_RING_BYTES,
                    keep_stdin=False) -> Process:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=env, preexec_fn=preexec,
                start_new_session=True, close_fds=True,
            )
        except FileNotFoundError as e:
            raise bad_request(f"command not found: {e.filename or argv[0]}", code="command_not_found") from e
        except PermissionError as e:
            raise bad_request(f"cannot execute {argv[0]}: {e}") from e
        except subprocess.SubprocessError as e:  # the preexec set-up failed (chroot, cwd, user ids)
            raise bad_request(f"cannot start {argv[0]} as this user in this directory: {e}") from e
        p = Process(proc, argv, command, cwd, user_name, ring_bytes)
        if not keep_stdin:
            # The process sees EOF on stdin instead of hanging on a read.
            p.stdin_closed = True
            if proc.stdin is not None:
                proc.stdin.close()
        self.processes[p.id] = p
        self._prune()
        return p

    def _prune(self):
        finished = [pid for pid, p in self.processes.items() if not p.running and p.output_closed]
        for pid in finished[:max(0, len(finished) - MAX_FINISHED_KEPT)]:
            del self.processes[pid]

    def get(self, pid: str) -> Process:
        p = self.processes.get(pid)
        if p is None:
            raise not_found(f"no process {pid!r}", code="process_not_found")
        return p

    async def run_foreground(self, p: Process, timeout, max_output: int) -> dict:
        if not await p.wait_exit(timeout):
            p.timed_out = True
            p.kill_group(signal.SIGKILL)
            await p.wait_exit()
        await p.wait_output_closed(0.5)
        output = p.ring.tail(max_output)
        return {
            "id": p.id, "pid": p.pid, "status": p.status, "exit_code": p.returncode,
            "output": base64.b64encode(output).decode(), "output_bytes": p.ring.total,
            "truncated": p.ring.total > len(output),
            "started_at": p.started_at, "finished_at": p.finished_at,
        }

    def kill_all(self) -> None:
        for p in self.processes.values():
            if p.running:
                p.kill_group(signal.SIGKILL)
