"""`chaser exec -- CMD…`: run a command in a session over HTTP."""

from __future__ import annotations

import base64
import shlex
import sys
from typing import Any

import typer

from chaser.cli.commands._common import (
    JSON_OPTION_HELP,
    api_command,
    fail,
    make_client,
    parse_env,
    print_json,
    resolve_session,
)

TIMEOUT_EXIT_CODE = 124  # as coreutils `timeout`

CONTEXT_SETTINGS = {"allow_interspersed_args": False, "ignore_unknown_options": True}


def command_text(words: list[str]) -> str:
    """One word is taken as a shell command line; several are quoted and joined."""
    return words[0] if len(words) == 1 else shlex.join(words)


def exit_code_of(result: dict[str, Any]) -> int:
    status = result.get("status")
    code = result.get("exit_code")
    if status == "timed_out":
        return TIMEOUT_EXIT_CODE
    if status == "running":
        return 0
    if isinstance(code, int):
        return code if 0 <= code <= 255 else 1
    return 1 if status == "failed" else 0


def output_bytes(result: dict[str, Any]) -> bytes:
    output = result.get("output") or ""
    if result.get("output_encoding") == "base64":
        return base64.b64decode(output)
    return output.encode("utf-8", "surrogateescape")


@api_command
def exec_command(
    command: list[str] = typer.Argument(
        ..., metavar="CMD", help="The command, after `--`: one word is a shell line, several are quoted and joined."
    ),
    session: str | None = typer.Option(None, "--session", "-s", help="Session id (default: the current session)."),
    workspace: str | None = typer.Option(
        None, "--workspace", help="Run via POST /v1/exec in this workspace's session instead."
    ),
    background: bool = typer.Option(False, "--background", "-b", help="Start it and return its command id."),
    timeout: int | None = typer.Option(None, "--timeout", help="Timeout in milliseconds."),
    cwd: str | None = typer.Option(None, "--cwd", help="Working directory (default /workspace)."),
    env: list[str] | None = typer.Option(None, "--env", "-e", help="KEY=VALUE (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Run a command in a session; print its output and exit with its exit code (124 on timeout)."""
    if not command:
        fail("invalid_argument", "no command given")
    text = command_text(command)
    environment = parse_env(env)
    with make_client() as client:
        if workspace and not session:
            if background:
                fail("invalid_argument", "--background needs a session, not --workspace")
            result = client.exec.run(text, workspace=workspace, timeout_ms=timeout, cwd=cwd, env=environment)
        else:
            result = client.exec.in_session(
                resolve_session(session), text, cwd=cwd, env=environment, timeout_ms=timeout, background=background
            )
    code = exit_code_of(result)
    if as_json:
        print_json(result)
        raise typer.Exit(code)
    if result.get("status") == "running":
        print(f"{result.get('command_id')}")
        print(
            f"started in background (pid {result.get('pid', '?')}); "
            f"follow with: chaser commands logs {result.get('command_id')} -f",
            file=sys.stderr,
        )
        raise typer.Exit(0)
    sys.stdout.buffer.write(output_bytes(result))
    sys.stdout.flush()
    if result.get("output_truncated"):
        print("warning: output truncated by the server", file=sys.stderr)
    if result.get("status") == "timed_out":
        print(f"error: timed_out: command did not finish within {timeout or 'the default'} ms", file=sys.stderr)
    raise typer.Exit(code)
