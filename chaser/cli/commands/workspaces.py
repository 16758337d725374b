"""`chaser workspaces …`: persistent storage for sandbox sessions."""

from __future__ import annotations

import typer

from chaser.cli.commands._common import (
    ALLOW_OUT_HELP,
    DENY_OUT_HELP,
    INTERNET_OPTION_HELP,
    JSON_OPTION_HELP,
    WIDE_OPTION_HELP,
    api_command,
    console,
    fail,
    make_client,
    network_policy,
    print_fields,
    print_json,
    print_table,
    split_multi,
)

app = typer.Typer(help="Workspaces: create, list, get, rename, template, move, delete, snapshots.",
                  no_args_is_help=True)
snapshots_app = typer.Typer(help="Workspace snapshots: list, create, restore, delete.", no_args_is_help=True)
app.add_typer(snapshots_app, name="snapshots")

JsonOption = typer.Option(False, "--json", help=JSON_OPTION_HELP)
WideOption = typer.Option(False, "--wide", help=WIDE_OPTION_HELP)


@app.command("create")
@api_command
def create_workspace(
    session_type: str = typer.Option("sandbox", "--session-type", help="Session type (only `sandbox`)."),
    name: str | None = typer.Option(None, "--name", help="Workspace name (unique)."),
    image: str | None = typer.Option(None, "--image", help="OCI image its sessions use."),
    clone_from: str | None = typer.Option(None, "--clone-from", help="Start with a copy of this workspace's disk."),
    template: bool | None = typer.Option(None, "--template/--no-template", help="Mark it as a template."),
    internet: bool | None = typer.Option(None, "--internet/--no-internet", help=INTERNET_OPTION_HELP),
    allow_out: list[str] | None = typer.Option(None, "--allow-out", metavar="HOST", help=ALLOW_OUT_HELP),
    deny_out: list[str] | None = typer.Option(None, "--deny-out", metavar="HOST", help=DENY_OUT_HELP),
    as_json: bool = JsonOption,
) -> None:
    """Create a workspace (its sessions inherit the network flags' egress policy)."""
    with make_client() as client:
        workspace = client.workspaces.create(name=name, session_type=session_type, image=image,
                                             clone_from=clone_from, template=template,
                                             network=network_policy(internet, allow_out, deny_out))
    if as_json:
        print_json(workspace)
    else:
        from rich.markup import escape

        label = f" ({workspace['name']})" if workspace.get("name") else ""
        console().print(f"workspace [bold]{escape(str(workspace.get('id')))}[/bold]{escape(label)} created")


@app.command("list")
@api_command
def list_workspaces(as_json: bool = JsonOption, wide: bool = WideOption) -> None:
    """List workspaces."""
    with make_client() as client:
        workspaces = client.workspaces.list()
    if as_json:
        print_json(workspaces)
        return
    print_table(
        workspaces,
        [("id", "ID"), ("name", "NAME"), ("image", "IMAGE"), ("status", "STATUS"), ("template", "TEMPLATE"),
         ("active_session_id", "ACTIVE SESSION"), ("created_at", "CREATED")],
        empty="no workspaces", wide=wide, wide_only={"template"},
    )


@app.command("get")
@api_command
def get_workspace(
    workspace: str = typer.Argument(..., metavar="W", help="Name or id."), as_json: bool = JsonOption
) -> None:
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


WorkspaceArgument = typer.Argument(..., metavar="W", help="Workspace name or id.")


@app.command("rename")
@api_command
def rename_workspace(
    workspace: str = WorkspaceArgument,
    name: str | None = typer.Argument(None, metavar="[NAME]", help="New name (omit, or --clear, to remove it)."),
    clear: bool = typer.Option(False, "--clear", help="Remove the name."),
    as_json: bool = JsonOption,
) -> None:
    """Rename a workspace."""
    if name is None and not clear:
        fail("invalid_argument", "give a NAME, or --clear to remove the name")
    with make_client() as client:
        result = client.workspaces.rename(workspace, None if clear else name)
    if as_json:
        print_json(result)
    else:
        console().print(f"workspace {result.get('id')} is now named {result.get('name')!r}"
                        if result.get("name") else f"workspace {result.get('id')} has no name", markup=False)


@app.command("move")
@api_command
def move_workspace(
    workspace: str = WorkspaceArgument,
    node: str = typer.Option(..., "--node", metavar="NODE", help="The node to move it to (`chaser nodes list`)."),
    as_json: bool = JsonOption,
) -> None:
    """Move a workspace's disk and snapshots to another node (an admin key), checked by checksum.
    Refused while a session of it is active."""
    with make_client() as client:
        result = client.workspaces.move(workspace, node)
    if as_json:
        print_json(result)
    elif not result.get("moved"):
        console().print(f"workspace {result.get('workspace_id')} is on node {result.get('node_id')}", markup=False)
    else:
        console().print(
            f"workspace {result.get('workspace_id')} moved from node {result.get('from_node_id')} to node "
            f"{result.get('node_id')}: {result.get('files')} files, {_mib(result.get('bytes'))} MiB in "
            f"{float(result.get('duration_ms') or 0) / 1000:.1f}s, sha256 {result.get('sha256')}", markup=False)


def _mib(value: object) -> str:
    return f"{int(value or 0) / (1 << 20):.1f}" if isinstance(value, int | float) else "?"


@app.command("template")
@api_command
def set_template(
    workspace: str = WorkspaceArgument,
    on: bool = typer.Option(..., "--on/--off", help="Mark it as a template, or not."),
    as_json: bool = JsonOption,
) -> None:
    """Mark a workspace as a template (clone it with `create --clone-from`)."""
    with make_client() as client:
        result = client.workspaces.set_template(workspace, on)
    if as_json:
        print_json(result)
    else:
        state = "a template" if result.get("template") else "not a template"
        console().print(f"workspace {result.get('id')} is {state}", markup=False)


@app.command("bulk-delete")
@api_command
def bulk_delete(
    ids: list[str] | None = typer.Option(None, "--ids", "--id",
                                         help="Names or ids (repeatable or comma-separated)."),
    all_workspaces: bool = typer.Option(False, "--all", help="Every workspace of the account."),
    force: bool = typer.Option(False, "--force", help="Also terminate their active sessions."),
    as_json: bool = JsonOption,
) -> None:
    """Delete several workspaces (and their disks and snapshots)."""
    id_list = split_multi(ids)
    if not id_list and not all_workspaces:
        fail("invalid_argument", "say which workspaces: --all or --ids")
    with make_client() as client:
        result = client.workspaces.bulk_delete(ids=id_list, all=all_workspaces, force=force)
    if as_json:
        print_json(result)
        return
    out = console()
    for item in result.get("results", []):
        if item.get("deleted"):
            out.print(f"deleted {item.get('id')}", markup=False)
        else:
            out.print(f"failed {item.get('id')}: {item.get('error')}", markup=False)
    out.print(f"{result.get('deleted', 0)} of {result.get('requested', 0)} deleted", markup=False)
    if result.get("failed"):
        raise typer.Exit(1)


# --- snapshots ---------------------------------------------------------------

@snapshots_app.command("list")
@api_command
def list_snapshots(workspace: str = WorkspaceArgument, as_json: bool = JsonOption, wide: bool = WideOption) -> None:
    """List a workspace's snapshots."""
    with make_client() as client:
        snapshots = client.workspaces.snapshots.list(workspace)
    if as_json:
        print_json(snapshots)
        return
    from chaser.cli.commands.images import _human

    print_table(
        [{**snapshot, "used": _human(snapshot["used_bytes"]) if isinstance(snapshot.get("used_bytes"), int) else None}
         for snapshot in snapshots],
        [("id", "ID"), ("name", "NAME"), ("used_bytes", "USED BYTES") if wide else ("used", "USED"),
         ("created_at", "CREATED"), ("restored_at", "RESTORED")],
        empty="no snapshots", wide=wide,
    )


@snapshots_app.command("create")
@api_command
def create_snapshot(
    workspace: str = WorkspaceArgument,
    name: str | None = typer.Option(None, "--name", help="Snapshot name (unique in the workspace)."),
    as_json: bool = JsonOption,
) -> None:
    """Snapshot a workspace's disk (a running session is paused for the copy)."""
    with make_client() as client:
        snapshot = client.workspaces.snapshots.create(workspace, name=name)
    if as_json:
        print_json(snapshot)
    else:
        console().print(f"snapshot {snapshot.get('id')} of {snapshot.get('workspace_id')} created "
                        f"({snapshot.get('used_bytes')} bytes used)", markup=False)


@snapshots_app.command("restore")
@api_command
def restore_snapshot(
    workspace: str = WorkspaceArgument,
    snapshot: str = typer.Argument(..., metavar="SNAPSHOT", help="Snapshot id or name."),
    force: bool = typer.Option(False, "--force", help="Terminate the workspace's running session first."),
    as_json: bool = JsonOption,
) -> None:
    """Replace a workspace's disk by a snapshot."""
    with make_client() as client:
        result = client.workspaces.snapshots.restore(workspace, snapshot, force=force)
    if as_json:
        print_json(result)
    else:
        console().print(f"restored snapshot {result.get('id')} into {result.get('workspace_id')}", markup=False)


@snapshots_app.command("delete")
@api_command
def delete_snapshot(
    workspace: str = WorkspaceArgument,
    snapshot: str = typer.Argument(..., metavar="SNAPSHOT", help="Snapshot id or name."),
    as_json: bool = JsonOption,
) -> None:
    """Delete a snapshot."""
    with make_client() as client:
        result = client.workspaces.snapshots.delete(workspace, snapshot)
    if as_json:
        print_json(result)
    else:
        console().print(f"deleted snapshot {snapshot}", markup=False)
