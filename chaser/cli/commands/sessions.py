"""`chaser sessions …`: list, inspect, terminate, pause, resume, fork, self-test, network policy."""

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
    expand_session_id,
    fail,
    format_value,
    make_client,
    network_policy,
    print_fields,
    print_json,
    print_table,
    resolve_session,
    split_multi,
)

app = typer.Typer(help="Sessions: list, get, terminate, pause, resume, fork, self-test, network.",
                  no_args_is_help=True)

JsonOption = typer.Option(False, "--json", help=JSON_OPTION_HELP)
WideOption = typer.Option(False, "--wide", help=WIDE_OPTION_HELP)
IdArgument = typer.Argument(None, metavar="[ID]", help="Session id or a unique prefix of it "
                                                      "(default: the current session).")


@app.command("list")
@api_command
def list_sessions(as_json: bool = JsonOption, wide: bool = WideOption) -> None:
    """List sessions (ids shortened to a usable prefix; --wide for full ones)."""
    from chaser.client import get_current_session

    with make_client() as client:
        page = client.sessions.list_page()
    if as_json:
        print_json(page)
        return
    current = get_current_session()
    rows = [{**s, "current": "*" if s.get("id") == current else ""} for s in page.get("sessions", [])]
    marker = [("current", "")] if any(row["current"] for row in rows) else []
    print_table(
        rows,
        [*marker, ("id", "ID"), ("status", "STATUS"), ("workspace_id", "WORKSPACE"), ("image", "IMAGE"),
         ("created_at", "CREATED"), ("expires_at", "EXPIRES")],
        empty="no sessions", wide=wide, wide_only={"expires_at"},
    )


@app.command("get")
@api_command
def get_session(session_id: str | None = IdArgument, as_json: bool = JsonOption) -> None:
    """Show one session."""
    session_id = resolve_session(session_id)
    with make_client() as client:
        session = client.sessions.get(session_id)
    if as_json:
        print_json(session)
    else:
        print_fields(session)


@app.command("terminate")
@api_command
def terminate_session(
    session_id: str | None = IdArgument,
    force: bool = typer.Option(False, "--force", help="Terminate even if commands or connections are active."),
    as_json: bool = JsonOption,
) -> None:
    """Terminate a session (the current one by default)."""
    from chaser.client import get_current_session, set_current_session

    session_id = resolve_session(session_id)
    with make_client() as client:
        result = client.sessions.terminate(session_id, force=force)
    if get_current_session() == session_id:
        set_current_session(None)
    if as_json:
        print_json(result or {"id": session_id, "status": "terminated"})
    else:
        console().print(f"terminated {session_id}", markup=False)


def _change_state(session_id: str | None, as_json: bool, verb: str) -> None:
    """`pause` or `resume` the session (the current one by default)."""
    session_id = resolve_session(session_id)
    with make_client() as client:
        result = getattr(client.sessions, verb)(session_id)
    if as_json:
        print_json(result)
    else:
        console().print(f"{verb}d {session_id}", markup=False)


@app.command("pause")
@api_command
def pause_session(session_id: str | None = IdArgument, as_json: bool = JsonOption) -> None:
    """Pause a session: its memory and disk are saved, its VM ends; any request (exec, files, a shell,
    a forwarded port) or `resume` brings it back with its processes."""
    _change_state(session_id, as_json, "pause")


@app.command("resume")
@api_command
def resume_session(session_id: str | None = IdArgument, as_json: bool = JsonOption) -> None:
    """Resume a paused session (its processes, files and memory as they were)."""
    _change_state(session_id, as_json, "resume")


@app.command("fork")
@api_command
def fork_session(
    session_id: str | None = IdArgument,
    count: int = typer.Option(1, "--count", "-n", min=1, help="How many copies."),
    workspace: list[str] | None = typer.Option(
        None, "--workspace", help="Name of a new workspace for each fork (repeat once per fork); "
                                  "omitted: the forks are ephemeral."),
    as_json: bool = JsonOption,
) -> None:
    """Fork a running session: COUNT new sessions, each a copy of its memory and disk now
    (the source goes on). Prints the new session ids."""
    session_id = resolve_session(session_id)
    with make_client() as client:
        result = client.sessions.fork(session_id, count=count, workspace_names=workspace or None)
    if as_json:
        print_json(result)
        return
    for forked in result.get("sessions", []):
        console().print(str(forked.get("id")), markup=False)


@app.command("self-test")
@api_command
def self_test(session_id: str | None = IdArgument, as_json: bool = JsonOption) -> None:
    """Describe the session's runtime: cwd, PATH, shell, tools, Chaser markers."""
    session_id = resolve_session(session_id)
    with make_client() as client:
        report = client.sessions.self_test(session_id)
    if as_json:
        print_json(report)
        return
    runtime = report.get("runtime") or {}
    out = console()
    out.print(f"{report.get('status', '?')} session {report.get('session_id', session_id)}", markup=False)
    for key in ("cwd", "home", "user", "shell", "term", "lang"):
        if key in runtime:
            out.print(f"  {key}: {format_value(runtime[key])}", markup=False)
    if runtime.get("path_entries"):
        out.print("  path:", markup=False)
        for entry in runtime["path_entries"]:
            out.print(f"    {entry}", markup=False)
    versions = runtime.get("tool_versions") or {}
    tools = runtime.get("tools") or {}
    if tools or versions:
        out.print("  tools:", markup=False)
        for name in sorted(set(tools) | set(versions)):
            out.print(f"    {name}: {format_value(versions.get(name) or tools.get(name))}", markup=False)
    for key, value in sorted((runtime.get("chaser") or {}).items()):
        out.print(f"  chaser.{key}: {format_value(value)}", markup=False)


@app.command("network")
@api_command
def network(
    session_id: str | None = IdArgument,
    internet: bool | None = typer.Option(None, "--internet/--no-internet", help=INTERNET_OPTION_HELP),
    allow_out: list[str] | None = typer.Option(None, "--allow-out", metavar="HOST", help=ALLOW_OUT_HELP),
    deny_out: list[str] | None = typer.Option(None, "--deny-out", metavar="HOST", help=DENY_OUT_HELP),
    as_json: bool = JsonOption,
) -> None:
    """Show the session's egress policy; with flags, replace it (what is not given takes the default).

    A change applies to new connections at once; the session must be running."""
    session_id = resolve_session(session_id)
    policy = network_policy(internet, allow_out, deny_out)
    with make_client() as client:
        if policy is None:
            result = client.sessions.get_network(session_id)
        else:
            result = client.sessions.set_network(session_id, **policy)
    if as_json:
        print_json(result)
        return
    print_fields(result, ["internet", "allow_out", "deny_out", "enforced"])
    if result.get("enforced") is False:
        console().print("note: this server runs without network isolation (CHASER_NETWORK=none or slirp): "
                        "the policy is recorded, not enforced", markup=False)


@app.command("bulk-terminate")
@api_command
def bulk_terminate(
    all_sessions: bool = typer.Option(False, "--all", help="Every session of this key's owner."),
    ids: list[str] | None = typer.Option(None, "--ids", "--id", help="Session ids (repeatable or comma-separated)."),
    workspaces: list[str] | None = typer.Option(None, "--workspace", "-w",
                                                help="Sessions of this workspace (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Terminate even if busy."),
    as_json: bool = JsonOption,
) -> None:
    """Terminate many sessions at once."""
    from chaser.client import get_current_session, set_current_session

    id_list, workspace_list = [expand_session_id(i) for i in split_multi(ids)], split_multi(workspaces)
    if not (all_sessions or id_list or workspace_list):
        fail("invalid_argument", "say which sessions: --all, --ids or --workspace")
    with make_client() as client:
        result = client.sessions.bulk_terminate(ids=id_list, workspaces=workspace_list, all=all_sessions, force=force)
    if get_current_session() in set(result.get("terminated") or []):
        set_current_session(None)
    if as_json:
        print_json(result)
    else:
        out = console()
        for session_id in result.get("terminated") or []:
            out.print(f"terminated {session_id}", markup=False)
        for failure in result.get("failed") or []:
            out.print(f"failed {failure.get('id')}: {failure.get('code')}: {failure.get('message')}", markup=False)
        if not result.get("terminated") and not result.get("failed"):
            out.print("no sessions matched", markup=False)
    if result.get("failed"):
        raise typer.Exit(1)
