"""The `chaser` command. Heavy imports live inside commands so `--help` is instant."""

from __future__ import annotations

import typer

from chaser.cli.commands import (
    _common,
    audit,
    commands,
    console_cmd,
    execute,
    files,
    guest,
    images,
    keys,
    mcp_cmd,
    nodes,
    sandbox,
    server,
    sessions,
    workspaces,
)
from chaser.cli.commands import forward as forward_cmd
from chaser.cli.commands import shell as shell_cmd

app = typer.Typer(help="Chaser: sandbox sessions in microVMs.", no_args_is_help=True, add_completion=False)


@app.callback()
def main(
    api_url: str | None = typer.Option(
        None, "--api-url", envvar="CHASER_API_URL", show_envvar=True, help="Server URL (default: config file, then http://127.0.0.1:8080)."
    ),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="CHASER_API_KEY", show_envvar=True, help="API key (default: config file)."
    ),
    ca: str | None = typer.Option(
        None, "--ca", envvar="CHASER_CA_BUNDLE", show_envvar=True,
        help="PEM certificate(s) to trust for an https server, besides the system's (default: the config "
             "file's ca_bundle).",
    ),
) -> None:
    """Chaser: sandbox sessions in microVMs. Config file: $CHASER_CONFIG or ~/.config/chaser/config.json."""
    _common.GLOBAL_OPTIONS["api_url"] = api_url
    _common.GLOBAL_OPTIONS["api_key"] = api_key
    _common.GLOBAL_OPTIONS["ca_bundle"] = ca


app.command("sandbox")(sandbox.sandbox_command)
app.command("exec", context_settings=execute.CONTEXT_SETTINGS)(execute.exec_command)
app.command("upload")(files.upload_command)
app.command("download")(files.download_command)
app.add_typer(sessions.app, name="sessions")
app.add_typer(commands.app, name="commands")
app.add_typer(workspaces.app, name="workspaces")
app.add_typer(keys.app, name="keys")
app.add_typer(audit.app, name="audit")
app.add_typer(nodes.app, name="nodes")
app.add_typer(guest.app, name="guest")
app.add_typer(images.app, name="images")
app.add_typer(mcp_cmd.app, name="mcp")
app.command("shell")(shell_cmd.shell_command)
app.command("forward")(forward_cmd.forward_command)
app.command("console")(console_cmd.console_command)

app.command("server")(server.server_command)
app.command("node")(server.node_command)


if __name__ == "__main__":
    app()
