"""`chaser upload SRC DST` and `chaser download SRC DST`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from chaser.cli.commands._common import (
    JSON_OPTION_HELP,
    api_command,
    console,
    fail,
    make_client,
    print_json,
    resolve_session,
)


@api_command
def upload_command(
    source: str = typer.Argument(..., metavar="SRC", help="Local file (`-` = stdin)."),
    destination: str = typer.Argument(..., metavar="DST", help="Path inside the sandbox."),
    session: str | None = typer.Option(None, "--session", "-s", help="Session id (default: the current session)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Upload a local file into the session (16 MB max)."""
    session_id = resolve_session(session)
    with make_client() as client:
        if source == "-":
            result = client.files.upload(session_id, destination, file=sys.stdin.buffer)
        else:
            if not Path(source).is_file():
                fail("file_not_found", f"{source}: no such local file")
            result = client.files.upload(session_id, destination, file=source)
    if as_json:
        print_json(result)
    else:
        console().print(f"uploaded {result.get('size', '?')} bytes to {result.get('path', destination)}", markup=False)


@api_command
def download_command(
    source: str = typer.Argument(..., metavar="SRC", help="Path inside the sandbox."),
    destination: str = typer.Argument(..., metavar="DST", help="Local file (`-` = stdout)."),
    session: str | None = typer.Option(None, "--session", "-s", help="Session id (default: the current session)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Download a file from the session (16 MB max)."""
    session_id = resolve_session(session)
    with make_client() as client:
        if destination == "-":
            size = client.files.download_to(session_id, source, sys.stdout.buffer)
            sys.stdout.flush()
            return
        target = Path(destination)
        if target.is_dir():
            target = target / Path(source).name
        size = client.files.download_to(session_id, source, target)
    if as_json:
        print_json({"path": str(target), "size": size})
    else:
        console().print(f"downloaded {size} bytes to {target}", markup=False)
