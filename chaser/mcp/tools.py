"""The tool bodies: each takes a client (the caller's own key) and its checked arguments.

Every tool goes through the Chaser REST API (`chaser.client`), so the API's auth, scopes
and account checks apply unchanged. `chaser.client` errors propagate: the registry turns
them into error results.

`terminal` result text: the first line is a JSON object
`{"session_id", "workspace_id", "exit_code", "status", "output_truncated"}`, the rest is
the command output (or the file-operation results). `structuredContent` has the same
keys plus `output` (and `operations` for xml calls).
"""

from __future__ import annotations

from typing import Any

from mcp import types

from chaser.client import ChaserClient, ChaserClientError
from chaser.mcp.arguments import TerminalRequest
from chaser.mcp.files import FileOp, format_file_op_result, run_file_op
from chaser.mcp.results import json_result, terminal_result

__all__ = [
    "create_session",
    "create_workspace",
    "fork_session",
    "list_sessions",
    "list_workspaces",
    "pause_session",
    "resume_session",
    "run_terminal",
    "terminate_session",
]


# --- terminal -----------------------------------------------------------------------------------

def run_terminal(client: ChaserClient, request: TerminalRequest) -> types.CallToolResult:
    if request.command is not None:
        return _run_command(client, request, request.command)
    return _run_file_ops(client, request, request.ops or [])


def _run_command(client: ChaserClient, request: TerminalRequest, command: str) -> types.CallToolResult:
    if request.target == "session_id":
        assert request.session_id is not None  # parse_terminal_arguments sets it for this target
        result = client.exec.in_session(request.session_id, command, cwd=request.cwd,
                                        timeout_ms=request.timeout_ms)
    elif request.target == "ephemeral":
        # Not `POST /v1/exec` with `ephemeral` (create, run, terminate): the session_id this
        # returns must stay usable for follow-up calls. It lives until session_terminate or its
        # idle timeout.
        session = client.sessions.create(ephemeral=True, network=request.network)
        try:
            result = client.exec.in_session(session["id"], command, cwd=request.cwd,
                                            timeout_ms=request.timeout_ms)
        except ChaserClientError:
            _terminate_quietly(client, session["id"])  # the caller never learns its id
            raise
    else:
        result = client.exec.run(command, workspace=request.workspace,
                                 cwd=request.cwd, timeout_ms=request.timeout_ms, network=request.network)
    output = result.get("output") or ""
    structured = {
        "session_id": result.get("session_id"),
        "workspace_id": result.get("workspace_id"),
        "exit_code": result.get("exit_code"),
        "status": result.get("status"),
        "output": output,
        "output_truncated": bool(result.get("output_truncated")),
        "ephemeral": request.target == "ephemeral",
    }
    return terminal_result(structured, output)


def _resolve_session(client: ChaserClient, request: TerminalRequest) -> tuple[str, str | None]:
    """(session_id, workspace_id) for file operations, starting the workspace's session if needed."""
    if request.target == "session_id":
        assert request.session_id is not None  # parse_terminal_arguments sets it for this target
        session = client.sessions.get(request.session_id)
        return session["id"], session.get("workspace_id")
    if request.target == "workspace":
        # `POST /v1/exec` owns "reuse the running session or start one"; `:` is the shell's no-op.
        result = client.exec.run(":", workspace=request.workspace, network=request.network)
        return result["session_id"], result.get("workspace_id")
    session = client.sessions.create(ephemeral=True, network=request.network)
    return session["id"], session.get("workspace_id")


def _terminate_quietly(client: ChaserClient, session_id: str) -> None:
    try:
        client.sessions.terminate(session_id, force=True)
    except ChaserClientError:
        pass  # the idle reaper ends it anyway


def _run_file_ops(client: ChaserClient, request: TerminalRequest, ops: list[FileOp]) -> types.CallToolResult:
    session_id, workspace_id = _resolve_session(client, request)
    # An ephemeral session stays for follow-up calls, as with a command (see _run_command).
    results = [run_file_op(client, session_id, op, cwd=request.cwd, timeout_ms=request.timeout_ms) for op in ops]
    failed = [result for result in results if not result["ok"]]
    body = "\n".join(format_file_op_result(result) for result in results)
    structured = {
        "session_id": session_id,
        "workspace_id": workspace_id,
        "exit_code": 1 if failed else 0,
        "status": "failed" if failed else "completed",
        "output": body,
        "output_truncated": any(result.get("truncated") for result in results),
        "ephemeral": request.target == "ephemeral",
        "operations": results,
    }
    return terminal_result(structured, body, is_error=bool(failed))


# --- sessions and workspaces --------------------------------------------------------------------

def list_sessions(client: ChaserClient, args: dict[str, Any]) -> types.CallToolResult:
    params = {"status": args["status"]} if "status" in args else None
    return json_result(client.request_json("GET", "/v1/sessions", params=params))


def create_session(client: ChaserClient, args: dict[str, Any]) -> types.CallToolResult:
    return json_result(client.sessions.create(**args))


def terminate_session(client: ChaserClient, args: dict[str, Any]) -> types.CallToolResult:
    return json_result(client.sessions.terminate(args["session_id"], force=bool(args.get("force"))))


def pause_session(client: ChaserClient, args: dict[str, Any]) -> types.CallToolResult:
    return json_result(client.sessions.pause(args["session_id"]))


def resume_session(client: ChaserClient, args: dict[str, Any]) -> types.CallToolResult:
    return json_result(client.sessions.resume(args["session_id"]))


def fork_session(client: ChaserClient, args: dict[str, Any]) -> types.CallToolResult:
    return json_result(client.sessions.fork(args["session_id"], count=int(args.get("count", 1)),
                                            workspace_names=args.get("workspace_names")))


def list_workspaces(client: ChaserClient, args: dict[str, Any]) -> types.CallToolResult:
    return json_result(client.workspaces.list(), key="workspaces")


def create_workspace(client: ChaserClient, args: dict[str, Any]) -> types.CallToolResult:
    return json_result(client.workspaces.create(**args))
