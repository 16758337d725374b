"""`chaser sandbox`: create a sandbox session and make it the current one."""

from __future__ import annotations

import typer

from chaser.cli.commands._common import (
    ALLOW_OUT_HELP,
    DENY_OUT_HELP,
    INTERNET_OPTION_HELP,
    JSON_OPTION_HELP,
    api_command,
    console,
    make_client,
    network_policy,
    parse_env,
    print_json,
)


@api_command
def sandbox_command(
    ephemeral: bool = typer.Option(False, "--ephemeral", help="Throw the session's disk away when it ends."),
    image: str | None = typer.Option(None, "--image", help="OCI image reference for the sandbox root."),
    workspace: str | None = typer.Option(None, "--workspace", help="Workspace (name or id) to attach."),
    env: list[str] | None = typer.Option(None, "--env", "-e", help="KEY=VALUE for the session (repeatable)."),
    internet: bool | None = typer.Option(None, "--internet/--no-internet", help=INTERNET_OPTION_HELP),
    allow_out: list[str] | None = typer.Option(None, "--allow-out", metavar="HOST", help=ALLOW_OUT_HELP),
    deny_out: list[str] | None = typer.Option(None, "--deny-out", metavar="HOST", help=DENY_OUT_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Create a sandbox session (remembered as the current session)."""
    from chaser.client import set_current_session

    environment = parse_env(env)
    with make_client() as client:
        session = client.sessions.create(
            ephemeral=True if ephemeral else None,
            workspace=workspace,
            image=image,
            env=environment,
            network=network_policy(internet, allow_out, deny_out),
        )
    set_current_session(session["id"])
    if as_json:
        print_json(session)
        return
    details = [f"status {session.get('status', '?')}"]
    if session.get("workspace_id"):
        details.append(f"workspace {session['workspace_id']}")
    if session.get("image"):
        details.append(f"image {session['image']}")
    from rich.markup import escape

    console().print(f"session [bold]{escape(session['id'])}[/bold] ({escape(', '.join(details))}) "
                    "is now the current session")
