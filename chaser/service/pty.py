"""Interactive terminals: the modes, the bridge between a client WebSocket and
the agent's PTY WebSocket (`SandboxVM.pty`), and the service (`Terminals`) that
opens terminals and resizes and lists them.

Framing (both hops): binary frames carry terminal bytes; text frames carry JSON
control messages — client → server `{"type":"resize","rows","cols"}`,
`{"type":"signal","signal":"INT"}` (and, in exec mode, one first
`{"type":"exec","command":…}`); server → client `{"type":"exit","exit_code":N}`
right before a normal close.

Back-pressure: each pump awaits a send before it reads the next message, so a
client that stops reading stalls the agent's PTY reader (and so the shell),
never the server's memory: what is in flight is bounded by the WebSocket
queues (uvicorn pauses reading after one message; the websockets client keeps
at most `max_queue` messages of ≤ 64 KiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import shlex
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Literal

from chaser import errors
from chaser.aio import first_to_finish
from chaser.runtime.interface import AgentSocket
from chaser.service import audit
from chaser.service.client_socket import ClientClosed, ClientSocket
from chaser.service.live import LiveSession
from chaser.service.sessions import SessionManager

log = logging.getLogger(__name__)

Mode = Literal["human", "agent", "exec"]
MODES: tuple[str, ...] = ("human", "agent", "exec")
MAX_SIZE = 1000
DEFAULT_ROWS, DEFAULT_COLS = 24, 80

HUMAN_TERM = "xterm-256color"
# Agent mode: no colours, no pagers, a fixed plain prompt. bash runs without
# rc/profile files, which would otherwise overwrite PS1.
AGENT_ENV = {"NO_COLOR": "1", "PAGER": "cat", "GIT_PAGER": "cat", "PS1": "$ ", "PS2": "> "}
AGENT_TERM = "dumb"
AGENT_SHELL = "if [ -x /bin/bash ]; then exec /bin/bash --norc --noprofile -i; else exec /bin/sh -i; fi"
EXEC_TERM = "dumb"
MARKER_SEARCH_LIMIT = 64 * 1024
EXEC_FRAME_TIMEOUT_S = 60.0  # exec mode: how long the first frame (the command) may take


def check_size(rows: Any, cols: Any) -> tuple[int, int]:
    """rows/cols as ints in 1..1000, else InvalidRequest (400)."""
    try:
        r, c = int(rows), int(cols)
    except (TypeError, ValueError, OverflowError):  # OverflowError: JSON's Infinity
        raise errors.InvalidRequest(f"rows and cols must be integers in 1..{MAX_SIZE}") from None
    if isinstance(rows, bool) or isinstance(cols, bool) or not (1 <= r <= MAX_SIZE and 1 <= c <= MAX_SIZE):
        raise errors.InvalidRequest(f"rows and cols must be integers in 1..{MAX_SIZE}")
    return r, c


def check_mode(mode: str | None) -> str:
    mode = mode or "human"
    if mode not in MODES:
        raise errors.InvalidRequest(f"mode must be one of {', '.join(MODES)}")
    return mode


@dataclass
class PtyPlan:
    """What to ask the agent for, and how to clean the exec-mode preamble off the output."""

    params: dict[str, Any]
    marker: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def plan(mode: str, rows: int, cols: int, *, command: str | None = None, cwd: str | None = None,
         env: dict[str, str] | None = None) -> PtyPlan:
    params: dict[str, Any] = {"rows": rows, "cols": cols}
    if cwd:
        params["cwd"] = cwd
    if mode == "human":
        params["term"] = HUMAN_TERM  # no command: the agent runs `bash -l`, else `sh -l`
        if env:
            params["env"] = json.dumps(env)
        return PtyPlan(params)
    if mode == "agent":
        params.update(term=AGENT_TERM, command=AGENT_SHELL, env=json.dumps({**AGENT_ENV, **(env or {})}))
        return PtyPlan(params)
    if not command:
        raise errors.InvalidRequest("exec mode needs a command: send {\"type\":\"exec\",\"command\":\"…\"} first")
    # The tty would echo input and turn "\n" into "\r\n": switch both off, then
    # print a marker so the bridge knows where the command's own output starts
    # (input is held back until then, so nothing typed early is echoed).
    marker = f"__chaser_exec_{secrets.token_hex(8)}__"
    wrapper = (f"stty -echo -onlcr 2>/dev/null; printf '%s\\n' {marker}; "
               f"exec /bin/sh -c {shlex.quote(command)}")
    params.update(term=EXEC_TERM, command=wrapper)
    if env:
        params["env"] = json.dumps(env)
    return PtyPlan(params, marker=marker.encode())


def parse_control(text: str) -> dict[str, Any] | None:
    """A client control message, validated; None for anything unusable (ignored)."""
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the stack
        return None
    if not isinstance(msg, dict):
        return None
    kind = msg.get("type")
    if kind == "resize":
        try:
            rows, cols = check_size(msg.get("rows"), msg.get("cols"))
        except errors.InvalidRequest:
            return None
        return {"type": "resize", "rows": rows, "cols": cols}
    if kind == "signal" and isinstance(msg.get("signal"), (str, int)) and not isinstance(msg.get("signal"), bool):
        return {"type": "signal", "signal": msg["signal"]}
    if kind == "exec":
        return msg
    return None


class MarkerFilter:
    """Drops the agent's output up to and including the exec marker line."""

    def __init__(self, marker: bytes | None) -> None:
        self.marker = marker
        self.buffer = b""
        self.found = asyncio.Event()
        if marker is None:
            self.found.set()

    def feed(self, data: bytes) -> bytes:
        marker = self.marker
        if self.found.is_set() or marker is None:  # no marker: found from the start
            return data
        self.buffer += data
        at = self.buffer.find(marker)
        if at < 0:
            if len(self.buffer) > MARKER_SEARCH_LIMIT:  # something else is going on: show everything
                data, self.buffer = self.buffer, b""
                self.found.set()
                return data
            return b""
        rest = self.buffer[at + len(marker):]
        if rest in (b"", b"\r"):
            return b""  # the marker's newline has not arrived yet
        if rest.startswith(b"\r\n"):
            rest = rest[2:]
        elif rest.startswith(b"\n"):
            rest = rest[1:]
        self.buffer = b""
        self.found.set()
        return rest

    def finish(self) -> bytes:
        """At the end of the stream, whatever was held back (no marker was seen)."""
        if self.found.is_set():
            return b""
        data, self.buffer = self.buffer, b""
        marker = self.marker
        at = data.find(marker) if marker else -1
        if marker and at >= 0:
            data = data[at + len(marker):].lstrip(b"\r\n")
        return data


@dataclass
class BridgeResult:
    exit_code: int | None = None
    client_closed: bool = False
    agent_closed: bool = False


async def bridge(client: ClientSocket, agent_ws: AgentSocket, *,
                 output_filter: MarkerFilter | None = None) -> BridgeResult:
    """Pump frames between the client's WebSocket (accepted) and the agent's
    PTY WebSocket until one side ends; then close the other.

    Client gone first → the agent socket is closed, and the agent hangs up the
    shell (SIGHUP, then SIGKILL): no process outlives its socket."""
    from websockets.exceptions import ConnectionClosed

    result = BridgeResult()
    filt = output_filter or MarkerFilter(None)

    async def agent_to_client() -> None:
        try:
            try:
                while True:
                    message = await agent_ws.recv()
                    if isinstance(message, bytes):
                        data = filt.feed(message)
                        if data:
                            await client.send(data)
                        continue
                    try:
                        control = json.loads(message)
                    except ValueError:
                        continue
                    if isinstance(control, dict) and control.get("type") == "exit":
                        rest = filt.finish()
                        if rest:
                            await client.send(rest)
                        result.exit_code = control.get("exit_code")
                        await client.send(json.dumps({"type": "exit", "exit_code": result.exit_code}))
            except ConnectionClosed:
                pass
            result.agent_closed = True
        except Exception as exc:  # noqa: BLE001 - the bridge ends either way; only its cause differs
            if _is_disconnect(exc):
                result.client_closed = True
            else:
                log.debug("pty bridge: %r", exc)

    async def client_to_agent() -> None:
        try:
            await filt.found.wait()  # exec mode: hold input until the command runs
            while True:
                message = await client.receive()
                if isinstance(message, ClientClosed):
                    break
                if isinstance(message, bytes):
                    await agent_ws.send(message)
                else:
                    control = parse_control(message)
                    if control is not None and control["type"] in ("resize", "signal"):
                        await agent_ws.send(json.dumps(control))
        except Exception:  # noqa: BLE001 - whatever broke this direction, the client counts as gone
            pass
        result.client_closed = True  # not reached when cancelled: the agent side ended first

    try:
        await first_to_finish(agent_to_client(), client_to_agent(), name="pty")
    finally:
        with contextlib.suppress(Exception):
            await agent_ws.close()
        if not result.client_closed:
            code, reason = (1000, "") if result.exit_code is not None else (1011, "the sandbox terminal went away")
            with contextlib.suppress(Exception):
                await client.close(code=code, reason=reason)
    return result


def _is_disconnect(exc: BaseException) -> bool:
    # ClientGone is an OSError; RuntimeError: the server refuses to send on a closed socket.
    return isinstance(exc, (OSError, RuntimeError))


async def send_error_and_close(client: ClientSocket, exc: errors.ChaserError, code: int = 1011) -> None:
    """After the upgrade: an `{"type":"error"}` frame, then a close with `code`."""
    with contextlib.suppress(Exception):
        await client.send(json.dumps({"type": "error", "code": exc.code, "message": exc.message}))
    with contextlib.suppress(Exception):
        await client.close(code=code, reason=exc.code[:120])


# --- the service -----------------------------------------------------------------------
class Terminals:
    """The PTYs of running sessions: the WebSocket terminal, and the REST resize/list."""

    def __init__(self, sessions: SessionManager) -> None:
        self.sessions = sessions

    async def serve(self, live: LiveSession, mode: str, rows: int, cols: int, client: ClientSocket) -> None:
        """A terminal on the client's WebSocket (not accepted yet): in human and
        agent mode the upgrade is refused if the agent's PTY cannot be opened; in
        exec mode it is accepted first, as the command comes in the first frame."""
        if mode == "exec":
            await self._serve_exec(live, rows, cols, client)
            return
        terminal = plan(mode, rows, cols)
        async with AsyncExitStack() as stack:
            try:
                vm = await stack.enter_async_context(self.sessions.using(live))
                agent_ws = await stack.enter_async_context(vm.pty(terminal.params))
            except Exception as exc:  # noqa: BLE001 - every refusal is an HTTP answer
                await client.deny(exc)
                return
            await client.accept()
            self._record(live, mode, rows, cols)
            await bridge(client, agent_ws)

    async def _serve_exec(self, live: LiveSession, rows: int, cols: int, client: ClientSocket) -> None:
        async with self.sessions.using(live) as vm:
            await client.accept()
            try:
                first = await asyncio.wait_for(client.receive(), EXEC_FRAME_TIMEOUT_S)
            except TimeoutError:
                await send_error_and_close(client, errors.InvalidRequest("no exec frame received"), 1008)
                return
            if isinstance(first, ClientClosed):
                return
            control = parse_control(first) if isinstance(first, str) else None
            command = control.get("command") if control and control.get("type") == "exec" else None
            if control is None or not isinstance(command, str) or not command:
                await send_error_and_close(client, errors.InvalidRequest(
                    'exec mode: the first frame must be {"type":"exec","command":"…"}'), 1008)
                return
            env = control.get("env") if isinstance(control.get("env"), dict) else None
            cwd = control.get("cwd") if isinstance(control.get("cwd"), str) else None
            try:
                terminal = plan("exec", rows, cols, command=command, cwd=cwd, env=env)
                async with vm.pty(terminal.params) as agent_ws:
                    self._record(live, "exec", rows, cols, command=command)
                    await bridge(client, agent_ws, output_filter=MarkerFilter(terminal.marker))
            except errors.ChaserError as exc:
                await send_error_and_close(client, exc, 1008 if exc.status < 500 else 1011)

    def _record(self, live: LiveSession, mode: str, rows: int, cols: int, *, command: str | None = None) -> None:
        """`pty.opened`: the mode, and in exec mode the command line (cut to 4 KiB)."""
        metadata: dict[str, Any] = {"mode": mode, "rows": rows, "cols": cols}
        if command is not None:
            metadata["command"], metadata["command_truncated"] = audit.cap_text(command)
        self.sessions.audit.record("pty.opened", account_id=live.account_id, resource_type="session",
                                   resource_id=live.id, summary=f"{mode} terminal", metadata=metadata)

    async def open_ptys(self, live: LiveSession) -> list[dict[str, Any]]:
        """The session's open terminals, as the agent lists them."""
        async with self.sessions.using(live) as vm:
            return await vm.ptys()

    async def resize(self, live: LiveSession, rows: int, cols: int) -> list[Any]:
        """Resize every open terminal; what was resized (the agent's list)."""
        async with self.sessions.using(live) as vm:
            result = await vm.resize_ptys(rows, cols)
        resized: list[Any] = result.get("resized", [])
        return resized
