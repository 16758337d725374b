"""envd's `process.Process` service: processes by pid, their output as events.

A process's stdout and stderr are separate pipes (or one PTY); every open `Start` or
`Connect` stream of it is a subscriber that receives its output from then on, then
`end`. A stream that goes away does not end the process (`kill` does).
"""

import asyncio
import base64
import binascii
import os
import signal
import subprocess

from ..pty_session import PtySession, _set_winsize
from ..safepath import Root
from ..userenv import check_os_string
from .connect import RpcError, timeout_s

KEEPALIVE_DEFAULT_S = 50.0
SIGNALS = {"SIGNAL_SIGKILL": signal.SIGKILL, "SIGNAL_SIGTERM": signal.SIGTERM, 9: signal.SIGKILL,
           15: signal.SIGTERM}


def _status(returncode: int) -> tuple[int, bool, str]:
    """(exitCode, exited, status) as envd (Go's ProcessState) reports them."""
    if returncode >= 0:
        return returncode, True, f"exit status {returncode}"
    try:
        name = signal.Signals(-returncode).name[3:].lower()
    except ValueError:
        name = str(-returncode)
    return -1, False, f"signal: {'killed' if name == 'kill' else name}"


SUBSCRIBER_BACKLOG_BYTES = 8 * 1024 * 1024  # output queued for one stream, at most


class Subscription(asyncio.Queue):
    """One stream's queue of (event, output bytes)."""

    def __init__(self):
        super().__init__()
        self.pending_bytes = 0


class EnvdProcess:
    def __init__(self, proc, config: dict, tag, pty: PtySession | None):
        self.proc, self.config, self.tag, self.pty = proc, config, tag, pty
        self.pid = proc.pid
        self.subscribers: set = set()
        self.end: dict | None = None
        self.done = asyncio.Event()

    def info(self) -> dict:
        info = {"config": self.config, "pid": self.pid}
        if self.tag:
            info["tag"] = self.tag
        return info

    def publish(self, event: dict, size: int = 0) -> None:
        """To every open stream. A stream that is this far behind (its client does not read, e.g. a
        background command's handle nobody waits on) misses output rather than grow without bound
        or stall the process; `end` always reaches it."""
        for queue in list(self.subscribers):
            if size and queue.pending_bytes + size > SUBSCRIBER_BACKLOG_BYTES:
                continue
            queue.pending_bytes += size
            queue.put_nowait((event, size))

    def subscribe(self) -> "Subscription":
        queue = Subscription()
        self.subscribers.add(queue)
        if self.end is not None:
            queue.put_nowait(({"end": self.end}, 0))
        return queue

    async def run(self, envd) -> None:
        readers = []
        if self.pty is not None:
            readers.append(asyncio.ensure_future(self._pump("pty", self.pty.read)))
        else:
            readers.append(asyncio.ensure_future(self._pump("stdout", lambda: self.proc.stdout.read(65536))))
            readers.append(asyncio.ensure_future(self._pump("stderr", lambda: self.proc.stderr.read(65536))))
        returncode = await self.proc.wait()
        # A background grandchild may hold the pipes open: do not wait for ever.
        await asyncio.wait(readers, timeout=0.5)
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        if self.pty is not None:
            os.close(self.pty.master)
        exit_code, exited, status = _status(returncode)
        self.end = {"exitCode": exit_code, "exited": exited, "status": status}
        envd.processes.pop(self.pid, None)
        self.publish({"end": self.end})
        self.done.set()

    async def _pump(self, kind: str, read) -> None:
        while True:
            data = await read()
            if not data:
                return
            self.publish({"data": {kind: base64.b64encode(data).decode()}}, len(data))

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except OSError:
            pass

    async def write(self, data: bytes, pty: bool) -> None:
        if pty:
            if self.pty is None:
                raise RpcError("failed_precondition", f"process {self.pid} has no PTY")
            await self.pty.write(data)
            return
        stdin = self.proc.stdin
        if stdin is None or stdin.is_closing():
            raise RpcError("failed_precondition", f"process {self.pid} has no open stdin")
        try:
            stdin.write(data)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise RpcError("failed_precondition", f"process {self.pid} closed its stdin") from None


def _exists(root_dir: str, path: str) -> bool:
    try:
        with Root(root_dir) as root:
            os.close(root.open(path, os.O_PATH))
        return True
    except OSError:
        return False


def _bytes(value, what: str) -> bytes:
    try:
        return base64.b64decode(value or "", validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise RpcError("invalid_argument", f"{what} is not valid base64") from None


def _size(pty: dict) -> tuple[int, int]:
    size = (pty or {}).get("size") or {}
    rows, cols = size.get("rows", 24), size.get("cols", 80)
    for value in (rows, cols):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10000:
            raise RpcError("invalid_argument", "pty rows and cols must be integers in 1..10000")
    return rows, cols


async def _cancel_when_done(p: EnvdProcess, timer) -> None:
    await p.done.wait()
    timer.cancel()


class ProcessService:
    def __init__(self, envd):
        self.envd = envd

    def find(self, selector) -> EnvdProcess:
        selector = selector or {}
        pid, tag = selector.get("pid"), selector.get("tag")
        for p in self.envd.processes.values():
            if (pid is not None and p.pid == pid) or (tag is not None and p.tag == tag):
                return p
        raise RpcError("not_found", f"process with {'pid ' + str(pid) if pid is not None else 'tag ' + repr(tag)} "
                                    "not found")

    async def _spawn(self, request, message) -> EnvdProcess:
        config = message.get("process") or {}
        cmd, args = config.get("cmd"), config.get("args") or []
        if not isinstance(cmd, str) or not cmd or not isinstance(args, list) \
                or not all(isinstance(a, str) for a in args):
            raise RpcError("invalid_argument", "process.cmd must be a string and process.args strings")
        argv = [check_os_string(a, "command") for a in [cmd, *args]]
        if argv[0] == "/bin/bash" and not _exists(self.envd.agent.root, "/bin/bash"):
            argv[0] = "/bin/sh"  # the SDK runs `/bin/bash -l -c`; an image without bash (busybox) has sh
        envs = config.get("envs") or {}
        user = self.envd.user(request)
        cwd = self.envd.path(config["cwd"], user) if config.get("cwd") else user.home or "/"
        pty_config = message.get("pty")
        term = "xterm-256color" if pty_config is not None else "dumb"
        cwd, user, env, preexec = self.envd.agent.spawn_setup(cwd, envs, user.name, term,
                                                              controlling_tty=pty_config is not None)
        pty = None
        try:
            if pty_config is not None:
                rows, cols = _size(pty_config)
                master, slave = os.openpty()
                try:
                    _set_winsize(master, rows, cols)
                    os.set_blocking(master, False)
                    proc = await asyncio.create_subprocess_exec(
                        *argv, stdin=slave, stdout=slave, stderr=slave, env=env, preexec_fn=preexec,
                        start_new_session=True, close_fds=True)
                except BaseException:
                    os.close(master)
                    raise
                finally:
                    os.close(slave)
                pty = PtySession(master, proc, rows, cols)
            else:
                stdin = asyncio.subprocess.PIPE if message.get("stdin") else asyncio.subprocess.DEVNULL
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=stdin, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
                    preexec_fn=preexec, start_new_session=True, close_fds=True)
        except FileNotFoundError as e:
            raise RpcError("invalid_argument", f"command not found: {e.filename or argv[0]}") from e
        except (OSError, subprocess.SubprocessError) as e:
            raise RpcError("invalid_argument", f"cannot start {argv[0]}: {e}") from e
        p = EnvdProcess(proc, {"cmd": cmd, "args": args, "envs": envs, "cwd": cwd}, message.get("tag"), pty)
        self.envd.processes[p.pid] = p
        self.envd.agent.spawn_task(p.run(self.envd))
        return p

    async def _events(self, request, p: EnvdProcess, queue: Subscription):
        """start, then output and keepalives until end (or the call's deadline: the process is killed)."""
        try:
            interval = float(request.headers.get("Keepalive-Ping-Interval") or KEEPALIVE_DEFAULT_S)
        except ValueError:
            interval = KEEPALIVE_DEFAULT_S
        deadline = timeout_s(request)
        loop = asyncio.get_running_loop()
        until = loop.time() + deadline if deadline else None
        try:
            yield {"event": {"start": {"pid": p.pid}}}
            while True:
                wait = interval if until is None else min(interval, until - loop.time())
                try:
                    event, size = await asyncio.wait_for(queue.get(), max(wait, 0))
                    queue.pending_bytes -= size
                except TimeoutError:
                    if until is not None and loop.time() >= until:
                        p.signal(signal.SIGKILL)
                        raise RpcError("deadline_exceeded", "the call's deadline passed: the process was killed")\
                            from None
                    yield {"event": {"keepalive": {}}}
                    continue
                yield {"event": event}
                if "end" in event:
                    return
        finally:
            p.subscribers.discard(queue)

    async def start(self, request, message):
        p = await self._spawn(request, message)
        queue = p.subscribe()
        deadline = timeout_s(request)
        if deadline:  # the process lives no longer than its call, even when the caller gave up first
            timer = asyncio.get_running_loop().call_later(deadline, p.signal, signal.SIGKILL)
            self.envd.agent.spawn_task(_cancel_when_done(p, timer))
        async for item in self._events(request, p, queue):
            yield item

    async def connect(self, request, message):
        p = self.find(message.get("process"))
        queue = p.subscribe()
        async for item in self._events(request, p, queue):
            yield item

    async def list(self, request, message):
        return {"processes": [p.info() for p in self.envd.processes.values()]}

    async def send_input(self, request, message):
        p = self.find(message.get("process"))
        await self._input(p, message.get("input") or {})
        return {}

    async def _input(self, p: EnvdProcess, data: dict) -> None:
        if "pty" in data:
            await p.write(_bytes(data["pty"], "input.pty"), pty=True)
        else:
            await p.write(_bytes(data.get("stdin"), "input.stdin"), pty=False)

    async def stream_input(self, request, messages):
        p = None
        async for message in messages:
            if "start" in message:
                p = self.find((message["start"] or {}).get("process"))
            elif "data" in message:
                if p is None:
                    raise RpcError("failed_precondition", "the stream must start with a start message")
                await self._input(p, (message["data"] or {}).get("input") or {})
        return {}

    async def close_stdin(self, request, message):
        p = self.find(message.get("process"))
        if p.proc.stdin is not None and not p.proc.stdin.is_closing():
            p.proc.stdin.close()
        return {}

    async def send_signal(self, request, message):
        p = self.find(message.get("process"))
        sig = SIGNALS.get(message.get("signal"))
        if sig is None:
            raise RpcError("invalid_argument", f"unknown signal {message.get('signal')!r}")
        p.signal(sig)
        return {}

    async def update(self, request, message):
        p = self.find(message.get("process"))
        if message.get("pty") is not None:
            if p.pty is None:
                raise RpcError("failed_precondition", f"process {p.pid} has no PTY")
            p.pty.resize(*_size(message["pty"]))
        return {}
