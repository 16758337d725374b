"""Interactive terminals: the modes, and the bridge between a client WebSocket
and the agent's `/pty` WebSocket.

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
from dataclasses import dataclass, field
from typing import Any, Literal

from chaser import errors

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


def check_size(rows: Any, cols: Any) -> tuple[int, int]:
    """rows/cols as ints in 1..1000, else InvalidRequest (400)."""
    try:
        r, c = int(rows), int(cols)
    except (TypeError, ValueError):
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
    except ValueError:
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
        if self.found.is_set():
            return data
        self.buffer += data
        at = self.buffer.find(self.marker)
        if at < 0:
            if len(self.buffer) > MARKER_SEARCH_LIMIT:  # something else is going on: show everything
                data, self.buffer = self.buffer, b""
                self.found.set()
                return data
            return b""
        rest = self.buffer[at + len(self.marker):]
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
        at = data.find(self.marker) if self.marker else -1
        if at >= 0:
            data = data[at + len(self.marker):].lstrip(b"\r\n")
        return data


@dataclass
class BridgeResult:
    exit_code: int | None = None
    client_closed: bool = False
    agent_closed: bool = False


async def bridge(client, agent_ws, *, output_filter: MarkerFilter | None = None) -> BridgeResult:
    """Pump frames between a Starlette WebSocket (`client`, accepted) and the
    agent's PTY WebSocket until one side ends; then close the other.

    Client gone first → the agent socket is closed, and the agent hangs up the
    shell (SIGHUP, then SIGKILL): no process outlives its socket."""
    from websockets.exceptions import ConnectionClosed

    result = BridgeResult()
    filt = output_filter or MarkerFilter(None)

    async def agent_to_client() -> None:
        try:
            async for message in agent_ws:
                if isinstance(message, bytes):
                    data = filt.feed(message)
                    if data:
                        await client.send_bytes(data)
                    continue
                try:
                    control = json.loads(message)
                except ValueError:
                    continue
                if isinstance(control, dict) and control.get("type") == "exit":
                    rest = filt.finish()
                    if rest:
                        await client.send_bytes(rest)
                    result.exit_code = control.get("exit_code")
                    await client.send_text(json.dumps({"type": "exit", "exit_code": result.exit_code}))
        except ConnectionClosed:
            pass
        result.agent_closed = True

    async def client_to_agent() -> None:
        await filt.found.wait()  # exec mode: hold input until the command runs
        while True:
            message = await client.receive()
            if message["type"] == "websocket.disconnect":
                result.client_closed = True
                return
            if message.get("bytes") is not None:
                await agent_ws.send(message["bytes"])
            elif message.get("text") is not None:
                control = parse_control(message["text"])
                if control is not None and control["type"] in ("resize", "signal"):
                    await agent_ws.send(json.dumps(control))

    out_task = asyncio.create_task(agent_to_client(), name="pty-agent-to-client")
    in_task = asyncio.create_task(client_to_agent(), name="pty-client-to-agent")
    try:
        done, _ = await asyncio.wait({out_task, in_task}, return_when=asyncio.FIRST_COMPLETED)
        if in_task in done:
            result.client_closed = True
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                if task is in_task or _is_disconnect(exc):
                    result.client_closed = True
                else:
                    log.debug("pty bridge: %r", exc)
    finally:
        for task in (out_task, in_task):
            task.cancel()
        await asyncio.gather(out_task, in_task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await agent_ws.close()
        if not result.client_closed:
            code, reason = (1000, "") if result.exit_code is not None else (1011, "the sandbox terminal went away")
            with contextlib.suppress(Exception):
                await client.close(code=code, reason=reason)
    return result


def _is_disconnect(exc: BaseException) -> bool:
    from starlette.websockets import WebSocketDisconnect

    return isinstance(exc, (WebSocketDisconnect, OSError, RuntimeError))
