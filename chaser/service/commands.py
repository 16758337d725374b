"""Commands in a session: exec, the agent's process table, stdin, signals, output streams, self-test."""

from __future__ import annotations

import base64
import json
import posixpath
from collections.abc import AsyncIterator
from typing import Any

from chaser import errors
from chaser.config import Settings
from chaser.models.exec import (
    CommandPublic,
    ExecCreate,
    ExecPublic,
    KillCreate,
    KillPublic,
    SessionExecCreate,
    StdinCreate,
    StdinPublic,
)
from chaser.models.sessions import ProxyInfo, RuntimeChaserInfo, RuntimeInfo, SelfTestPublic
from chaser.runtime import AGENT_PROTOCOL_VERSION, DEFAULT_WORKDIR, SandboxVM
from chaser.service import audit
from chaser.service.keys import Principal
from chaser.service.live import LiveSession
from chaser.service.sessions import SessionManager

COMMAND_OUTPUT_TAIL_BYTES = 64 * 1024
STREAM_CHUNK_BYTES = 64 * 1024
DEFAULT_STREAM_WAIT_MS = 10_000
MAX_STREAM_WAIT_MS = 30_000


def exit_code_of(returncode: int | None) -> int | None:
    """Shell convention: killed by signal N is 128 + N."""
    if returncode is None:
        return None
    return 128 - returncode if returncode < 0 else returncode


def command_status(agent_status: str, returncode: int | None) -> str:
    if agent_status == "completed" and returncode not in (None, 0):
        return "failed"
    return agent_status


def decode_text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def absolute_path(path: str) -> str:
    """Relative paths are relative to the workspace root, like the default cwd."""
    if "\0" in path:
        raise errors.InvalidRequest("path contains a NUL byte")
    if not path:
        raise errors.InvalidRequest("path is required")
    return posixpath.normpath(posixpath.join(DEFAULT_WORKDIR, path))


def not_found_command(command_id: str) -> errors.NotFound:
    return errors.CommandNotFound(f"no command {command_id!r} in this session")


class CommandService:
    def __init__(self, sessions: SessionManager, settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings

    # --- exec ----------------------------------------------------------------
    async def exec(self, live: LiveSession, request: SessionExecCreate) -> ExecPublic:
        cwd = absolute_path(request.cwd) if request.cwd is not None else None
        try:
            async with self.sessions.using(live) as vm:
                result = await vm.exec(
                    request.command, cwd=cwd, env=request.env, timeout_ms=request.timeout_ms,
                    max_output_bytes=self.settings.exec_max_output_bytes, background=request.background,
                )
        except errors.ChaserError as exc:
            self._record_exec(live, request, cwd, {}, error=exc.code)
            raise
        self._record_exec(live, request, cwd, result)
        base = dict(session_id=live.id, workspace=live.workspace_name, workspace_id=live.workspace_id,
                    ephemeral=live.ephemeral, command=request.command, background=request.background,
                    command_id=result.get("id"), pid=result.get("pid"))
        if request.background:
            return ExecPublic(status="running", **base)
        output = base64.b64decode(result.get("output") or "")
        status = command_status(result.get("status", "completed"), result.get("exit_code"))
        if status == "killed":
            status = "failed"
        return ExecPublic(status=status, exit_code=exit_code_of(result.get("exit_code")),
                          output=decode_text(output), output_truncated=bool(result.get("truncated")), **base)

    def _record_exec(self, live: LiveSession, request: SessionExecCreate, cwd: str | None, result: dict[str, Any],
                     *, error: str | None = None) -> None:
        """`command.exec`: the command line (cut to 4 KiB), never its env values or output."""
        command, cut = audit.cap_text(request.command)
        outcome: dict[str, Any] = (
            {"error": error} if error else {"command_id": result.get("id"), "pid": result.get("pid")})
        if not error and not request.background:
            outcome["exit_code"] = exit_code_of(result.get("exit_code"))
        self.sessions.audit.record(
            "command.exec", account_id=live.account_id, resource_type="session", resource_id=live.id,
            status=audit.FAILURE if error else audit.SUCCESS, summary=command.split("\n", 1)[0][:200],
            metadata={"command": command, "command_truncated": cut, "cwd": cwd, "background": request.background,
                      **outcome})

    async def run(self, principal: Principal, request: ExecCreate) -> ExecPublic:
        """`POST /v1/exec`: reuse the workspace's session or start one; an ephemeral one ends with the command."""
        if request.session_type != "sandbox":
            raise errors.UnsupportedSessionType(
                f"session_type {request.session_type!r} is not supported; only 'sandbox'")
        workspace = self.sessions.workspaces.resolve_ref(principal, ephemeral=request.ephemeral,
                                                        workspace=request.workspace, image=request.image)
        command = SessionExecCreate(command=request.command, cwd=request.cwd, env=request.env,
                                    timeout_ms=request.timeout_ms, background=request.background)
        if workspace is not None:
            live = await self.sessions.ensure_for_workspace(principal, workspace, network=request.network)
            return await self.exec(live, command)
        if request.background:
            raise errors.InvalidRequest(
                "background commands need a workspace: an ephemeral session ends with the command")
        live = await self.sessions.create_ephemeral(principal, image=request.image, network=request.network)
        try:
            return await self.exec(live, command)
        finally:
            await self.sessions.terminate(principal, live.id, force=True)

    # --- the command table ---------------------------------------------------
    def _public(self, live: LiveSession, info: dict[str, Any], *, output: bytes | None = None) -> CommandPublic:
        started, finished = info.get("started_at"), info.get("finished_at")
        total = int(info.get("output_bytes") or 0)
        return CommandPublic(
            command_id=info["id"], session_id=live.id,
            status=command_status(info.get("status", "running"), info.get("exit_code")),
            pid=info.get("pid"), exit_code=exit_code_of(info.get("exit_code")),
            command=info.get("command") if isinstance(info.get("command"), str) else json.dumps(info.get("command")),
            cwd=info.get("cwd"), user=info.get("user"),
            started_at_epoch=int(started) if started is not None else None,
            finished_at_epoch=int(finished) if finished is not None else None,
            output_bytes=total,
            output=decode_text(output) if output is not None else None,
            output_truncated=output is not None and total > len(output),
        )

    async def _process(self, vm: SandboxVM, command_id: str) -> dict[str, Any]:
        try:
            return await vm.process(command_id)
        except errors.NotFound:
            raise not_found_command(command_id) from None

    async def list(self, live: LiveSession) -> list[CommandPublic]:
        async with self.sessions.using(live) as vm:
            processes = await vm.processes()
        return [self._public(live, info) for info in processes]

    async def get(self, live: LiveSession, command_id: str) -> CommandPublic:
        async with self.sessions.using(live) as vm:
            info = await self._process(vm, command_id)
            total = int(info.get("output_bytes") or 0)
            start = max(0, total - COMMAND_OUTPUT_TAIL_BYTES)
            chunk = await vm.output(command_id, offset=start, limit=COMMAND_OUTPUT_TAIL_BYTES)
        return self._public(live, info, output=chunk["data"])

    async def stdin(self, live: LiveSession, command_id: str, request: StdinCreate) -> StdinPublic:
        if request.encoding == "base64":
            try:
                data = base64.b64decode(request.input, validate=True)
            except ValueError:
                raise errors.InvalidRequest("input is not valid base64") from None
        else:
            data = request.input.encode()
        async with self.sessions.using(live) as vm:
            info = await self._process(vm, command_id)
            if info.get("status") != "running":
                raise errors.CommandFinished(f"command {command_id} has finished")
            result = await vm.write_stdin(command_id, data, close=request.close)
        return StdinPublic(command_id=command_id, session_id=live.id, written=int(result.get("written", len(data))),
                           closed=request.close)

    async def kill(self, live: LiveSession, command_id: str, request: KillCreate) -> KillPublic:
        name = parse_signal_name(request.signal)
        async with self.sessions.using(live) as vm:
            info = await self._process(vm, command_id)
            if info.get("status") != "running":
                raise errors.CommandFinished(f"command {command_id} has finished")
            try:
                await vm.signal(command_id, name)
            except errors.NotFound:
                raise not_found_command(command_id) from None
        return KillPublic(command_id=command_id, session_id=live.id, signal=name)

    # --- output stream -------------------------------------------------------
    async def check_command(self, live: LiveSession, command_id: str) -> None:
        async with self.sessions.using(live) as vm:
            await self._process(vm, command_id)

    async def stream(self, live: LiveSession, command_id: str, *, offset: int, wait_ms: int,
                     max_bytes: int | None) -> AsyncIterator[bytes]:
        """Server-Sent Events: `output` events, then one `exit` (see docs/api.md)."""
        sent = 0
        while True:
            limit = STREAM_CHUNK_BYTES if max_bytes is None else min(STREAM_CHUNK_BYTES, max_bytes - sent)
            try:
                async with self.sessions.using(live) as vm:
                    chunk = await vm.output(command_id, offset=offset, limit=limit, wait_ms=wait_ms)
            except errors.ChaserError as exc:
                yield sse("error", {"code": exc.code, "message": exc.message})
                return
            data: bytes = chunk["data"]
            start = int(chunk["offset"])
            finished = bool(chunk.get("finished"))
            if data:
                text, used = utf8_prefix(data, at_end=finished)
                if used:
                    payload = {"offset": start, "data": text, "encoding": "utf-8"}
                else:
                    used = len(data)
                    payload = {"offset": start, "data": base64.b64encode(data).decode(), "encoding": "base64"}
                offset = start + used
                sent += used
                yield sse("output", payload, event_id=str(offset))
                if used < len(data):
                    finished = False  # the rest comes in the next event
                if max_bytes is not None and sent >= max_bytes and not finished:
                    return
            else:
                offset = max(offset, start)
                if not finished:
                    yield b": keep-alive\n\n"
            if finished:
                status = command_status(chunk.get("status", "completed"), chunk.get("exit_code"))
                yield sse("exit", {"status": status, "exit_code": exit_code_of(chunk.get("exit_code"))})
                return

    # --- self-test -----------------------------------------------------------
    async def self_test(self, live: LiveSession) -> SelfTestPublic:
        async with self.sessions.using(live) as vm:
            facts = await vm.selftest()
        proxy = {}
        if live.proxy:
            proxy = {"all_proxy": live.proxy, "http_proxy": live.proxy, "https_proxy": live.proxy,
                     "no_proxy": "localhost,127.0.0.1,::1"}
        runtime = RuntimeInfo(
            cwd=facts.get("cwd"), home=facts.get("home"), user=facts.get("user"), shell=facts.get("shell"),
            path=facts.get("path"), path_entries=facts.get("path_entries") or [], term=facts.get("term"),
            lang=facts.get("lang"), workspace_root_present=bool(facts.get("workspace_root_present")),
            proxy=ProxyInfo(**proxy),
            chaser=RuntimeChaserInfo(session_id=live.id, workspace_id=live.workspace_id,
                                     agent_impl=f"chaser-agent/{AGENT_PROTOCOL_VERSION}", image=live.image),
            tools=facts.get("tools") or {}, tool_versions=facts.get("tool_versions") or {},
        )
        return SelfTestPublic(session_id=live.id, workspace_id=live.workspace_id, runtime=runtime)


def sse(event: str, data: dict[str, Any], *, event_id: str | None = None) -> bytes:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


def utf8_prefix(data: bytes, *, at_end: bool) -> tuple[str, int]:
    """(text, bytes used): all of `data` if it is UTF-8; a prefix if only a
    character cut at the end is incomplete (it follows in the next chunk); else ("", 0)."""
    try:
        return data.decode("utf-8"), len(data)
    except UnicodeDecodeError as exc:
        if at_end or exc.reason != "unexpected end of data" or exc.start < len(data) - 3 or exc.start == 0:
            return "", 0
        try:
            return data[: exc.start].decode("utf-8"), exc.start
        except UnicodeDecodeError:
            return "", 0


def parse_signal_name(value: str | int) -> str:
    import signal as signals

    try:
        if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
            return signals.Signals(int(value)).name.removeprefix("SIG")
        name = value.strip().upper()
        name = name if name.startswith("SIG") else "SIG" + name
        return signals.Signals[name].name.removeprefix("SIG")
    except (KeyError, ValueError):
        raise errors.InvalidRequest(f"invalid signal {value!r}", code="invalid_signal") from None
