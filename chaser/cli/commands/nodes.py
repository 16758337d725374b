"""`chaser nodes …`: the nodes sharing the server's database (an admin key: full access)."""

from __future__ import annotations

from typing import Any

import typer

from chaser.cli.commands._common import (
    JSON_OPTION_HELP,
    WIDE_OPTION_HELP,
    api_command,
    console,
    make_client,
    print_json,
    print_table,
)

app = typer.Typer(help="Nodes: list, cordon, uncordon, drain (an admin key).", no_args_is_help=True)

JsonOption = typer.Option(False, "--json", help=JSON_OPTION_HELP)


def _row(node: dict[str, Any]) -> dict[str, Any]:
    capacity = node.get("capacity") or {}
    return {**node, "state": "lost" if node.get("lost") else node.get("status"),
            "heartbeat": f"{float(node.get('heartbeat_age_s') or 0):.0f}s ago",
            "running": f"{node.get('sessions_running', 0)}/{capacity.get('sessions', '?')}",
            "resources": f"{capacity.get('vcpus', '?')} vCPU, {capacity.get('memory_mib', '?')} MiB",
            "name": f"{node.get('name')}{' (this)' if node.get('current') else ''}",
            "labels": ",".join(f"{key}={value}" for key, value in sorted((node.get("labels") or {}).items()))}


@app.command("list")
@api_command
def list_nodes(as_json: bool = JsonOption,
               wide: bool = typer.Option(False, "--wide", help=WIDE_OPTION_HELP)) -> None:
    """List the nodes: status (lost when it stopped heartbeating), heartbeat age, sessions running."""
    with make_client() as client:
        nodes = client.nodes.list()
    if as_json:
        print_json({"nodes": nodes})
        return
    print_table(
        [_row(node) for node in nodes],
        [("id", "ID"), ("name", "NAME"), ("state", "STATUS"), ("heartbeat", "HEARTBEAT"), ("running", "SESSIONS"),
         ("resources", "CAPACITY"), ("labels", "LABELS"), ("version", "VERSION"), ("started_at", "STARTED")],
        empty="no nodes", wide=wide, wide_only={"version", "resources", "labels"}, flex={"name"},
    )


def _set(node_id: str, *, cordon: bool, as_json: bool) -> None:
    with make_client() as client:
        node = client.nodes.cordon(node_id) if cordon else client.nodes.uncordon(node_id)
    if as_json:
        print_json(node)
    else:
        console().print(f"node {node.get('id')} ({node.get('name')}) is {node.get('status')}", markup=False)


@app.command("cordon")
@api_command
def cordon_node(node_id: str = typer.Argument(..., metavar="NODE"), as_json: bool = JsonOption) -> None:
    """No new sessions on NODE (503 node_cordoned); its running sessions carry on."""
    _set(node_id, cordon=True, as_json=as_json)


@app.command("uncordon")
@api_command
def uncordon_node(node_id: str = typer.Argument(..., metavar="NODE"), as_json: bool = JsonOption) -> None:
    """NODE starts new sessions again."""
    _set(node_id, cordon=False, as_json=as_json)


@app.command("drain")
@api_command
def drain_node(node_id: str = typer.Argument(..., metavar="NODE"), as_json: bool = JsonOption) -> None:
    """No new sessions on NODE, and its idle workspaces move to other nodes (each checked by checksum).
    A workspace with an active session stays (exit status 1): drain again once it ended."""
    with make_client() as client:
        result = client.nodes.drain(node_id)
    if as_json:
        print_json(result)
        raise typer.Exit(1 if result.get("kept") else 0)
    node = result.get("node") or {}
    console().print(f"node {node.get('id')} ({node.get('name')}) is {node.get('status')}: "
                    f"{result.get('moved')} workspaces moved, {result.get('kept')} kept", markup=False)
    for item in result.get("workspaces") or []:
        name = item.get("name") or item.get("workspace_id")
        where = f"→ {item.get('node_id')}" if item.get("node_id") else f"stayed: {item.get('error')}"
        console().print(f"  {name} {where}", markup=False)
    if result.get("kept"):
        raise typer.Exit(1)
