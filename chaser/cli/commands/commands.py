"""`chaser commands …`: a session's commands (background ones included)."""

from __future__ import annotations

import base64
import binascii
import json
import sys

import typer

from chaser.cli.commands._common import (
    JSON_OPTION_HELP,
    SESSION_OPTION_HELP,
    WIDE_OPTION_HELP,
    api_command,
    console,
    fail,
    make_client,
    print_fields,
    print_json,
    print_table,
    resolve_session,
)

app = typer.Typer(help="Commands run in a session: list, logs, stdin, kill.", no_args_is_help=True)

SessionOption = typer.Option(None, "--session", "-s", help=SESSION_OPTION_HELP)
JsonOption = typer.Option(False, "--json", help=JSON_OPTION_HELP)


@app.command("list")
@api_command
def list_commands(session: str | None = SessionOption, as_json: bool = JsonOption,
                  wide: bool = typer.Option(False, "--wide", help=WIDE_OPTION_HELP)) -> None:
    """List the session's commands."""
    session_id = resolve_session(session)
    with make_client() as client:
        page = client.commands.list_page(session_id)
    if as_json:
        print_json(page)
        return
    print_table(
        page.get("commands", []),
        [("command_id", "COMMAND ID"), ("status", "STATUS"), ("exit_code", "EXIT"), ("pid", "PID"),
         ("command", "COMMAND")],
        empty="no commands", wide=wide,
    )


@app.command("get")
@api_command
def get_command(
    command_id: str = typer.Argument(..., metavar="CID"),
    session: str | None = SessionOption,
    as_json: bool = JsonOption,
) -> None:
    """Show one command (status, exit code, output)."""
    session_id = resolve_session(session)
    with make_client() as client:
        command = client.commands.get(session_id, command_id)
    if as_json:
        print_json(command)
        return
    print_fields({key: value for key, value in command.items() if key != "output"})


@app.command("logs")
@api_command
def command_logs(
    command_id: str = typer.Argument(..., metavar="CID"),
    follow: bool = typer.Option(False, "--follow", "-f", help="Stream output until the command exits."),
    from_offset: int = typer.Option(0, "--from", help="Start at this byte offset (with -f)."),
    session: str | None = SessionOption,
    as_json: bool = typer.Option(False, "--json", help="Print the command as JSON (with -f: one JSON event per line)."),
) -> None:
    """Print a command's output; with -f follow it live and exit with the command's exit code."""
    from chaser.cli.commands.execute import exit_code_of
    from chaser.client import decode_output

    session_id = resolve_session(session)
    with make_client() as client:
        if not follow:
            command = client.commands.get(session_id, command_id)
            if as_json:
                print_json(command)
            else:
                sys.stdout.write(command.get("output") or "")
                sys.stdout.flush()
                if command.get("output_truncated"):
                    print("warning: output truncated; use -f to stream all of it", file=sys.stderr)
            return
        exit_data: dict = {}
        for event in client.commands.stream(session_id, command_id, from_offset):
            if as_json:
                sys.stdout.write(json.dumps({"event": event["event"], "data": event["data"]}) + "\n")
                sys.stdout.flush()
            elif event["event"] == "output" and isinstance(event["data"], dict):
                sys.stdout.buffer.write(decode_output(event["data"]))
                sys.stdout.flush()
            if event["event"] == "exit":
                exit_data = event["data"] if isinstance(event["data"], dict) else {}
        if not exit_data:
            fail("stream_ended", "the output stream ended before the command exited")
    raise typer.Exit(exit_code_of(exit_data))


@app.command("stdin")
@api_command
def command_stdin(
    command_id: str = typer.Argument(..., metavar="CID"),
    text: str = typer.Argument("", metavar="TEXT", help="Input to send (`-` = read this process's stdin)."),
    close: bool = typer.Option(False, "--close", help="Close the command's stdin afterwards (EOF)."),
    is_base64: bool = typer.Option(False, "--base64", help="TEXT is base64-encoded bytes."),
    session: str | None = SessionOption,
    as_json: bool = JsonOption,
) -> None:
    """Write to a running command's stdin."""
    session_id = resolve_session(session)
    payload: str | bytes
    if text == "-":
        payload = sys.stdin.buffer.read()
    elif is_base64:
        try:
            base64.b64decode(text, validate=True)
        except binascii.Error:
            fail("invalid_argument", "TEXT is not valid base64")
        payload = text
    else:
        payload = text
    with make_client() as client:
        result = client.commands.send_stdin(
            session_id, command_id, payload, encoding="base64" if is_base64 and text != "-" else None, close=close
        )
    if as_json:
        print_json(result)
    else:
        console().print(f"sent to {command_id}" + (" and closed stdin" if close else ""), markup=False)


@app.command("kill")
@api_command
def kill_command(
    command_id: str = typer.Argument(..., metavar="CID"),
    signal: str | None = typer.Option(None, "--signal", help="Signal name or number (default: the server's, TERM)."),
    session: str | None = SessionOption,
    as_json: bool = JsonOption,
) -> None:
    """Send a signal to a running command."""
    session_id = resolve_session(session)
    with make_client() as client:
        number_or_name = int(signal) if signal and signal.isdigit() else signal
        result = client.commands.kill(session_id, command_id, signal=number_or_name)
    if as_json:
        print_json(result)
    else:
        console().print(f"signalled {command_id}" + (f" ({signal})" if signal else ""), markup=False)
