"""`chaser workspaces …`: persistent storage for sandbox sessions."""

from __future__ import annotations

from typing import Optional

import typer

from chaser.cli.commands._common import (
    JSON_OPTION_HELP,
    api_command,
    console,
    make_client,
    print_fields,
    print_json,
    print_table,
)

app = typer.Typer(help="Workspaces: create, list, get, delete.", no_args_is_help=True)

JsonOption = typer.Option(False, "--json", help=JSON_OPTION_HELP)


@app.command("create")
@api_command
def create_workspace(
    session_type: str = typer.Option("sandbox", "--session-type", help="Session type (only `sandbox`)."),
    name: Optional[str] = typer.Option(None, "--name", help="Workspace name (unique)."),
    image: Optional[str] = typer.Option(None, "--image", help="OCI image its sessions use."),
    as_json: bool = JsonOption,
) -> None:
    """Create a workspace."""
    with make_client() as client:
        workspace = client.workspaces.create(name=name, session_type=session_type, image=image)
    if as_json:
        print_json(workspace)
    else:
        from rich.markup import escape

        label = f" ({workspace['name']})" if workspace.get("name") else ""
        console().print(f"workspace [bold]{escape(str(workspace.get('id')))}[/bold]{escape(label)} created")


@app.command("list")
@api_command
def list_workspaces(as_json: bool = JsonOption) -> None:
    """List workspaces."""
    with make_client() as client:
        workspaces = client.workspaces.list()
    if as_json:
        print_json(workspaces)
        return
    print_table(
        workspaces,
        [("id", "ID"), ("name", "NAME"), ("image", "IMAGE"), ("status", "STATUS"),
         ("active_session_id", "ACTIVE SESSION"), ("created_at", "CREATED")],
        empty="no workspaces",
    )


@app.command("get")
@api_command
def get_workspace(workspace: str = typer.Argument(..., metavar="W", help="Name or id."), as_json: bool = JsonOption) -> None:
    """Show one workspace."""
    with make_client() as client:
        info = client.workspaces.get(workspace)
    if as_json:
        print_json(info)
    else:
        print_fields(info)


@app.command("delete")
@api_command
def delete_workspace(
    workspace: str = typer.Argument(..., metavar="W", help="Name or id."),
    force: bool = typer.Option(False, "--force", help="Also terminate its active session."),
    as_json: bool = JsonOption,
) -> None:
    """Delete a workspace and its disk."""
    with make_client() as client:
        result = client.workspaces.delete(workspace, force=force)
    if as_json:
        print_json(result or {"id": workspace, "deleted": True})
    else:
        console().print(f"deleted workspace {workspace}", markup=False)
