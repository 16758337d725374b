"""`chaser audit …`: the account's audit log (needs the `audit.read` scope or full access)."""

from __future__ import annotations

import sys

import typer

from chaser.cli.commands._common import (
    JSON_OPTION_HELP,
    WIDE_OPTION_HELP,
    api_command,
    make_client,
    print_json,
    print_table,
)

app = typer.Typer(help="The audit log: who did what, and when.", no_args_is_help=True)


@app.command("list")
@api_command
def list_events(
    limit: int = typer.Option(50, "--limit", min=1, max=1000, help="At most this many events (newest first)."),
    before: str | None = typer.Option(None, "--before", metavar="ID",
                                      help="Only events older than this event id (the next page)."),
    action: str | None = typer.Option(None, "--action", help="Only this action, e.g. command.exec."),
    resource_id: str | None = typer.Option(None, "--resource", metavar="ID",
                                           help="Only events of this session, workspace, snapshot or key."),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
    wide: bool = typer.Option(False, "--wide", help=WIDE_OPTION_HELP),
) -> None:
    """List audit events, newest first; `--before <last id>` shows the page after."""
    with make_client() as client:
        page = client.audit.list_page(before=before, limit=limit, action=action, resource_id=resource_id)
    if as_json:
        print_json(page)
        return
    events = page.get("events", [])
    print_table(
        events,
        [("id", "ID"), ("created_at", "TIME"), ("actor_id", "ACTOR"), ("client_address", "CLIENT"),
         ("action", "ACTION"), ("resource_id", "RESOURCE"), ("status", "STATUS"), ("summary", "SUMMARY")],
        empty="no audit events", wide=wide, wide_only={"client_address"}, flex={"summary", "actor_id"},
    )
    if len(events) == limit:
        print(f"more: chaser audit list --before {events[-1]['id']}", file=sys.stderr)
