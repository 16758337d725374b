"""Interactive terminals over WebSocket.

Binary frames carry terminal bytes both ways; client text frames are JSON
control messages (resize, signal); the agent ends with {"type":"exit"}.
"""

import asyncio
import errno
import fcntl
import json
import os
import secrets
import signal
import struct
import subprocess
import termios

from aiohttp import WSMsgType, web

from .errors import bad_request
from .processes import parse_signal
from .safepath import Root
from .userenv import argv_of, check_os_string


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _wake(ready: asyncio.Future) -> None:
    """The reader/writer callback: the master fd is ready (called once or more)."""
    if not ready.done():
        ready.set_result(None)


def _check_size(rows, cols):
    for v in (rows, cols):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10000:
            raise bad_request("rows and cols must be integers in 1..10000")
    return rows, cols


class PtySession:
    def __init__(self, master: int, proc, rows: int, cols: int):
        self.id = "p-" + secrets.token_hex(6)
        self.master, self.proc, self.rows, self.cols = master, proc, rows, cols

    def info(self) -> dict:
        return {"id": self.id, "pid": self.proc.pid, "rows": self.rows, "cols": self.cols}

    def resize(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        _set_winsize(self.master, rows, cols)  # the kernel sends SIGWINCH to the fg group

    def send_signal(self, sig: int) -> None:
        try:
            pgrp = os.tcgetpgrp(self.master)
        except OSError:
            pgrp = self.proc.pid
        try:
            os.killpg(pgrp, sig)
        except OSError:
            pass

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except OSError:
            pass

    async def read(self) -> bytes:
        """Wait until the master is readable, then read; b"" at EOF (EIO)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                return os.read(self.master, 65536)
            except BlockingIOError:
                pass
            except OSError as e:
                if e.errno == errno.EIO:  # every slave fd is closed
                    return b""
                raise
            ready = loop.create_future()
            loop.add_reader(self.master, _wake, ready)
            try:
                await ready
            finally:
                loop.remove_reader(self.master)

    async def write(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.master, view):]
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_writer(self.master, _wake, ready)
                try:
                    await ready
                finally:
                    loop.remove_writer(self.master)


async def _spawn(agent, request):
    q = request.query
    try:
        rows, cols = _check_size(int(q.get("rows", 24)), int(q.get("cols", 80)))
        env = json.loads(q["env"]) if q.get("env") else None
    except ValueError:
        raise bad_request("rows/cols must be integers and env a JSON object") from None
    term = check_os_string(q.get("term") or "xterm-256color", "term")
    _cwd, _user, env, preexec = agent.spawn_setup(q.get("cwd"), env, q.get("user"), term, controlling_tty=True)
    if q.get("command"):
        argv = argv_of(q["command"])
    else:
        with Root(agent.root) as root:
            try:
                os.close(root.open("/bin/bash", os.O_PATH))
                argv = ["/bin/bash", "-l"]
            except OSError:
                argv = ["/bin/sh", "-l"]
    master, slave = os.openpty()
    try:
        _set_winsize(master, rows, cols)
        os.set_blocking(master, False)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=slave, stdout=slave, stderr=slave, env=env, preexec_fn=preexec,
                start_new_session=True, close_fds=True)
        except (OSError, subprocess.SubprocessError) as e:  # as /exec: the request's program, user or cwd
            raise bad_request(f"cannot start {argv[0]}: {e}", code="command_not_found"
                              if isinstance(e, FileNotFoundError) else "invalid_request") from e
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)  # only the child keeps the slave: EOF (EIO) when it is gone
    return PtySession(master, proc, rows, cols)


async def handle_pty(agent, request):
    session = await _spawn(agent, request)  # errors here are still plain HTTP
    ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
    try:
        await ws.prepare(request)
    except BaseException:
        session.kill()
        await session.proc.wait()
        os.close(session.master)
        raise
    agent.ptys[session.id] = session

    async def pump_out():
        # Read the next chunk only once the previous one was sent: a client that
        # stops reading stalls the child (through the tty) instead of our memory.
        while True:
            data = await session.read()
            if not data:
                return
            await ws.send_bytes(data)

    async def pump_in():
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await session.write(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await _control(session, msg.data)

    out_task = asyncio.ensure_future(pump_out())
    in_task = asyncio.ensure_future(pump_in())
    exit_task = asyncio.ensure_future(session.proc.wait())
    try:
        await asyncio.wait([in_task, exit_task], return_when=asyncio.FIRST_COMPLETED)
        agent.ptys.pop(session.id, None)  # no longer resizable, before the client hears of it
        if exit_task.done():
            # Drain what is left; a background grandchild may hold the tty open.
            try:
                await asyncio.wait_for(asyncio.shield(out_task), 1.0)
            except (TimeoutError, ConnectionError, RuntimeError):
                pass
            if not ws.closed:
                try:
                    await ws.send_str(json.dumps({"type": "exit", "exit_code": exit_task.result()}))
                    await ws.close()
                except ConnectionError:
                    pass
        else:
            # Client went away first: hang up like a terminal would, then insist.
            session.kill(signal.SIGHUP)
            try:
                await asyncio.wait_for(asyncio.shield(exit_task), 1.0)
            except TimeoutError:
                session.kill(signal.SIGKILL)
    finally:
        for task in (out_task, in_task):
            task.cancel()
        if not exit_task.done():
            # Only while the leader is unreaped: afterwards its pid may be reused.
            session.kill(signal.SIGKILL)
        await exit_task  # reap: no zombies
        await asyncio.gather(out_task, in_task, return_exceptions=True)
        agent.ptys.pop(session.id, None)
        os.close(session.master)
    return ws


async def _control(session: PtySession, text: str) -> None:
    try:
        msg = json.loads(text)
        if msg.get("type") == "resize":
            session.resize(*_check_size(msg.get("rows"), msg.get("cols")))
        elif msg.get("type") == "signal":
            session.send_signal(parse_signal(msg.get("signal")))
    except Exception:  # noqa: BLE001 - a malformed control message must not end the session
        pass


async def list_ptys(agent, request):
    return web.json_response({"ptys": [s.info() for s in agent.ptys.values()]})


async def resize_ptys(agent, request):
    from .server import read_json
    body = await read_json(request)
    rows, cols = _check_size(body.get("rows"), body.get("cols"))
    target = body.get("id")
    resized = []
    for s in list(agent.ptys.values()):
        if target is None or s.id == target:
            s.resize(rows, cols)
            resized.append(s.id)
    if target is not None and not resized:
        from .errors import not_found
        raise not_found(f"no pty {target!r}")
    return web.json_response({"resized": resized})
