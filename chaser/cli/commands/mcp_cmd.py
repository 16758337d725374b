"""`chaser mcp …`: Chaser's MCP tools for local agents.

- `serve`: a stdio MCP server (`chaser.mcp.stdio`, the same tools as `POST /v1/mcp`) that
  forwards every tool call to a Chaser server with the CLI's URL and key;
- `install --agent claude|cursor|codex`: writes that agent's MCP configuration to run
  `chaser mcp serve` (merged into an existing file; `--print` shows it instead).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

import typer

from chaser.cli.commands._common import GLOBAL_OPTIONS, fail

app = typer.Typer(help="MCP for local agents: serve (stdio), install (agent configuration).",
                  no_args_is_help=True)

AGENTS = ("claude", "cursor", "codex")
SERVE_ARGS = ["mcp", "serve"]


class InstallError(Exception):
    """The existing configuration cannot be merged; nothing is written."""


# --- serve ------------------------------------------------------------------------------------

@app.command("serve")
def serve() -> None:
    """Serve Chaser's MCP tools over stdio (an agent starts this), forwarding to a Chaser server.

    URL and key as for every command: --api-url/--api-key, CHASER_API_URL/CHASER_API_KEY,
    then the config file ($CHASER_CONFIG or ~/.config/chaser/config.json)."""
    from chaser.client import resolve_settings

    settings = resolve_settings(GLOBAL_OPTIONS["api_url"], GLOBAL_OPTIONS["api_key"],
                                ca_bundle=GLOBAL_OPTIONS.get("ca_bundle"))
    if not settings.api_key:
        fail("no_api_key", "no API key: pass --api-key, set CHASER_API_KEY, or put api_key in the config file "
                           "(`chaser server` writes it)")
    from chaser.mcp.stdio import serve_stdio

    print(f"chaser mcp: serving MCP over stdio; tools call {settings.api_url}", file=sys.stderr, flush=True)
    serve_stdio(settings.api_url, settings.api_key, ca_bundle=settings.ca_bundle)


# --- install ----------------------------------------------------------------------------------

def default_path(agent: str) -> Path:
    """Claude Code: the project's `.mcp.json` (current directory); Cursor: `~/.cursor/mcp.json`;
    Codex: `$CODEX_HOME/config.toml`, default `~/.codex/config.toml`."""
    if agent == "claude":
        return Path.cwd() / ".mcp.json"
    if agent == "cursor":
        return Path.home() / ".cursor" / "mcp.json"
    codex_home = os.environ.get("CODEX_HOME")
    return (Path(codex_home).expanduser() if codex_home else Path.home() / ".codex") / "config.toml"


def chaser_executable() -> str:
    """This installation's `chaser` (next to the running Python, e.g. a venv), else the one on PATH."""
    beside = Path(sys.executable).with_name("chaser")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside.absolute())
    found = shutil.which("chaser")
    return str(Path(found).absolute()) if found else "chaser"


def server_entry(command: str, api_url: str, config_file: Path, api_key: str | None = None) -> dict[str, Any]:
    env = {"CHASER_API_URL": api_url, "CHASER_CONFIG": str(config_file)}
    if api_key:
        env["CHASER_API_KEY"] = api_key
    return {"command": command, "args": list(SERVE_ARGS), "env": env}


def merged_json(existing: str | None, name: str, entry: dict[str, Any]) -> str:
    """`{"mcpServers": {name: entry}}` merged into an existing JSON config (other keys and servers kept)."""
    data: Any = {}
    if existing and existing.strip():
        try:
            data = json.loads(existing)
        except ValueError as exc:
            raise InstallError(f"it is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise InstallError("it is not a JSON object")
    servers = data.setdefault("mcpServers", {})
    if not isinstance(servers, dict):
        raise InstallError("its mcpServers is not an object")
    servers[name] = entry
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_HEADER = re.compile(r"""^\s*\[\[?(?P<name>(?:[^\]"']|"(?:[^"\\]|\\.)*"|'[^']*')+)\]\]?\s*(?:#.*)?$""")
_KEY_PART = re.compile(r"""\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*(\.|$)""")


def _toml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string without non-ASCII escapes is a TOML basic string


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_str(key)


def toml_section(name: str, entry: dict[str, Any]) -> str:
    lines = [f"[mcp_servers.{_toml_key(name)}]",
             f"command = {_toml_str(entry['command'])}",
             "args = [" + ", ".join(_toml_str(arg) for arg in entry["args"]) + "]",
             "",
             f"[mcp_servers.{_toml_key(name)}.env]"]
    lines += [f"{_toml_key(key)} = {_toml_str(value)}" for key, value in entry["env"].items()]
    return "\n".join(lines) + "\n"


def _header_keys(name: str) -> list[str] | None:
    keys, pos = [], 0
    while pos < len(name):
        match = _KEY_PART.match(name, pos)
        if not match or match.end() == pos:
            return None
        keys.append(next(group for group in match.groups()[:3] if group is not None))
        pos = match.end()
    return keys


def merged_toml(existing: str | None, name: str, entry: dict[str, Any]) -> str:
    """Codex's config.toml with `[mcp_servers.<name>]` (and its sub-tables) replaced or added;
    everything else is kept as written. The result is parsed back to check it."""
    import tomllib

    existing = existing or ""
    try:
        tomllib.loads(existing)
    except tomllib.TOMLDecodeError as exc:
        raise InstallError(f"it is not valid TOML ({exc})") from None
    kept: list[str] = []
    skipping = False
    for line in existing.splitlines(keepends=True):
        header = _HEADER.match(line)
        if header:
            keys = _header_keys(header.group("name"))
            skipping = keys is not None and keys[:2] == ["mcp_servers", name]
        if not skipping:
            kept.append(line)
    head = "".join(kept).rstrip()
    text = (head + "\n\n" if head else "") + toml_section(name, entry)
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        parsed = {}
    if parsed.get("mcp_servers", {}).get(name) != entry:
        raise InstallError(f"it defines mcp_servers.{name} in a form this command cannot replace; edit it by hand")
    return text


def write_atomically(path: Path, text: str, *, private: bool) -> None:
    """Replace `path` (its mode kept; new files 0644, or 0600 when they hold a key)."""
    from chaser.client import write_file_atomically  # lazily: `chaser --help` stays light

    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
    if private:
        mode &= 0o600
    write_file_atomically(path, text, mode=mode)


@app.command("install")
def install(
    agent: str = typer.Option(..., "--agent", metavar="claude|cursor|codex",
                              help="claude: Claude Code's project .mcp.json; cursor: ~/.cursor/mcp.json; "
                                   "codex: ~/.codex/config.toml."),
    path: Path | None = typer.Option(None, "--path", help="Config file to write instead of the agent's default "
                                                          "(e.g. Claude Desktop's claude_desktop_config.json)."),
    name: str = typer.Option("chaser", "--name", help="Server name in the agent's configuration."),
    print_only: bool = typer.Option(False, "--print", help="Print the configuration instead of writing it."),
    embed_key: bool = typer.Option(False, "--embed-key",
                                   help="Write the API key into the agent's configuration (default: `chaser mcp "
                                        "serve` reads it from the Chaser config file named there)."),
    command: str | None = typer.Option(None, "--command", help="The chaser executable the agent runs "
                                                            "(default: this installation's)."),
) -> None:
    """Configure an agent to start `chaser mcp serve` (existing servers in the file are kept)."""
    from chaser.client import config_path, load_config, resolve_settings

    agent = agent.lower()
    if agent not in AGENTS:
        fail("invalid_argument", f"--agent must be one of {', '.join(AGENTS)}, not {agent!r}")
    if not name or not _BARE_KEY.match(name):
        fail("invalid_argument", "--name may hold letters, digits, '_' and '-' only")
    settings = resolve_settings(GLOBAL_OPTIONS["api_url"], GLOBAL_OPTIONS["api_key"])
    config_file = config_path().absolute()
    if not settings.api_key:
        print(f"warning: no API key found; `chaser mcp serve` reads it from {config_file} (or pass "
              "--api-key with --embed-key)", file=sys.stderr)
    elif not embed_key and settings.api_key != load_config(config_file).get("api_key"):
        print(f"warning: the API key in use is not the one in {config_file}, which `chaser mcp serve` will read; "
              "pass --embed-key to write it into the agent's configuration", file=sys.stderr)
    entry = server_entry(command or chaser_executable(), settings.api_url, config_file,
                         settings.api_key if embed_key else None)
    if print_only:
        if agent == "codex":
            sys.stdout.write(toml_section(name, entry))
        else:
            sys.stdout.write(json.dumps({"mcpServers": {name: entry}}, indent=2, ensure_ascii=False) + "\n")
        return
    target = Path(os.path.realpath((path or default_path(agent)).expanduser()))
    try:
        existing = target.read_text(encoding="utf-8") if target.exists() else None
    except OSError as exc:
        fail("install_failed", f"cannot read {target}: {exc}")
    try:
        text = (merged_toml if agent == "codex" else merged_json)(existing, name, entry)
    except InstallError as exc:
        fail("install_failed", f"not changing {target}: {exc}")
    try:
        write_atomically(target, text, private=embed_key)
    except OSError as exc:
        fail("install_failed", f"cannot write {target}: {exc}")
    print(f"{'updated' if existing is not None else 'wrote'} MCP server {name!r} in {target} ({agent}); "
          f"it runs: {entry['command']} {' '.join(SERVE_ARGS)}")
