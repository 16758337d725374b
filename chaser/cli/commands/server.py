"""`chaser server`: the API server (uvicorn), with an admin key made on first start."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

DEFAULT_HOST = "127.0.0.1"


def api_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def read_cli_config(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_cli_config(path: Path, data: dict) -> None:
    """Write atomically with mode 0600: it holds an API key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def ensure_admin_key(services, *, url: str, config_file: Path, echo=print) -> str:
    """Print the API URL and a usable admin key. A key is created (and saved to
    the CLI config) when the database has none, or the saved one no longer works."""
    echo(f"API URL: {url}")
    config = read_cli_config(config_file)
    saved = config.get("api_key")
    if services.keys.has_any_key() and isinstance(saved, str) and services.keys.is_valid(saved):
        if config.get("api_url") != url:
            write_cli_config(config_file, {**config, "api_url": url})
        echo(f"API key: {saved}")
        echo(f"(stored in {config_file})")
        return saved
    created = services.keys.create(name="admin", full_access=True)
    write_cli_config(config_file, {**config, "api_url": url, "api_key": created.key})
    echo(f"API key: {created.key}")
    echo(f"(new admin key, shown once; saved to {config_file} with mode 0600)")
    return created.key


def serve(host: str | None = None, port: int | None = None, data_dir: Path | None = None) -> None:
    """Run the server in the foreground until interrupted."""
    import logging

    import uvicorn

    from chaser.assembly import create_app
    from chaser.config import Settings

    overrides: dict = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if data_dir is not None:
        overrides["home"] = Path(data_dir).expanduser().resolve()
    settings = Settings(**overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    url = settings.public_url or api_url(settings.host, settings.port)
    ensure_admin_key(app.state.services, url=url, config_file=settings.config_file,
                     echo=lambda line: print(line, flush=True))
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=30)


def server_command(
    host: str = typer.Option(None, "--host", help="Address to listen on (env CHASER_HOST; default 127.0.0.1)."),
    port: int = typer.Option(None, "--port", help="Port (env CHASER_PORT; default 8080)."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Data directory (env CHASER_HOME)."),
) -> None:
    """Run the Chaser API server."""
    serve(host, port, data_dir)


app = typer.Typer(help="Run the API server.", add_completion=False)
app.command("server")(server_command)

if __name__ == "__main__":
    typer.run(server_command)
