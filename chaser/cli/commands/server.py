"""`chaser server`: the API server (uvicorn), with an admin key made on first start."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import ssl
import sys
from pathlib import Path
from typing import NoReturn

import typer

DEFAULT_HOST = "127.0.0.1"


def api_url(host: str, port: int, *, tls: bool = False) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"{'https' if tls else 'http'}://{shown}:{port}"


def is_loopback_host(host: str) -> bool:
    """Whether listening on `host` keeps the server on this machine: `localhost`, 127.0.0.0/8, ::1.
    The wildcards (`0.0.0.0`, `::`, empty) and every other address or name are not."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def plain_http_warning(host: str, *, tls: bool) -> str | None:
    """The one line `chaser server` logs when it serves plain HTTP beyond this machine."""
    if tls or is_loopback_host(host):
        return None
    return (f"listening on {host or '0.0.0.0'} without TLS: API keys and everything else cross the network in "
            "clear text; set --tls-cert/--tls-key (CHASER_TLS_CERT/CHASER_TLS_KEY) or keep the server on "
            "127.0.0.1 behind a TLS-terminating proxy")


class TLSConfigError(Exception):
    """The certificate and key cannot serve HTTPS (named in the message)."""


def check_tls_files(cert: Path, key: Path) -> None:
    """Both readable PEM files, and the key is the certificate's: checked before the server starts."""
    for label, path in (("certificate", cert), ("key", key)):
        try:
            with open(path, "rb") as handle:
                handle.read(1)
        except OSError as exc:
            raise TLSConfigError(f"TLS {label} {path}: {exc.strerror or exc}") from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise TLSConfigError(f"TLS certificate {cert} and key {key} do not serve HTTPS: {exc.reason or exc}") from None


def read_cli_config(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_cli_config(path: Path, data: dict) -> None:
    """Write atomically with mode 0600 (its directory, when made, 0700): it holds an API key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def ensure_admin_key(services, *, url: str, config_file: Path, echo=print, ca_bundle: Path | None = None,
                     given: str | None = None) -> str | None:
    """Print the API URL and a usable admin key. A key is created (and saved to
    the CLI config) when the database has none, or the saved one no longer works.
    With TLS the config's `ca_bundle` is the server's certificate (so the CLI on this
    machine trusts a self-signed one); without, it is dropped.
    `given` (CHASER_ADMIN_KEY, a deployment's Secret): installed when the database has no key,
    and never printed; then nothing else is created or saved."""
    echo(f"API URL: {url}")
    if given is not None:
        if not services.keys.has_any_key():
            services.keys.create(name="admin", full_access=True, secret=given)
            echo("API key: the one of CHASER_ADMIN_KEY (installed: the database had none)")
        else:
            echo("API key: CHASER_ADMIN_KEY is set and the database has keys: nothing created")
        return None
    config = read_cli_config(config_file)
    stale = config.get("api_url") != url or config.get("ca_bundle") != (str(ca_bundle) if ca_bundle else None)
    config = {key: value for key, value in config.items() if key != "ca_bundle"}
    if ca_bundle is not None:
        config["ca_bundle"] = str(ca_bundle)
    saved = config.get("api_key")
    if services.keys.has_any_key() and isinstance(saved, str) and services.keys.is_valid(saved):
        if stale:
            write_cli_config(config_file, {**config, "api_url": url})
        echo(f"API key: {saved}")
        echo(f"(stored in {config_file})")
        return saved
    created = services.keys.create(name="admin", full_access=True)
    write_cli_config(config_file, {**config, "api_url": url, "api_key": created.key})
    echo(f"API key: {created.key}")
    echo(f"(new admin key, shown once; saved to {config_file} with mode 0600)")
    return created.key


def server_settings(host: str | None = None, port: int | None = None, data_dir: Path | None = None,
                    tls_cert: Path | None = None, tls_key: Path | None = None):
    """The settings `chaser server` runs with (flags over env); SystemExit(2) with one line
    on stderr for a bad CHASER_PUBLIC_URL, half a TLS pair or TLS files that cannot serve."""
    from pydantic import ValidationError

    from chaser.config import Settings

    overrides: dict = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if data_dir is not None:
        overrides["home"] = Path(data_dir).expanduser().resolve()
    if tls_cert is not None:
        overrides["tls_cert"] = Path(tls_cert).expanduser().resolve()
    if tls_key is not None:
        overrides["tls_key"] = Path(tls_key).expanduser().resolve()
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        refuse_configuration(exc)
    check_serving_files(settings)
    return settings


def refuse_configuration(exc: Exception) -> NoReturn:
    """One line on stderr (pydantic's messages, or the error's), then exit status 2."""
    from pydantic import ValidationError

    messages = ("; ".join(str(error.get("msg", "")).removeprefix("Value error, ") for error in exc.errors())
                if isinstance(exc, ValidationError) else str(exc))
    print(f"error: invalid configuration: {messages}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None


def check_serving_files(settings) -> None:
    """SystemExit(2) with one line on stderr when the TLS pair cannot serve HTTPS."""
    if settings.tls_cert is not None and settings.tls_key is not None:
        try:
            check_tls_files(settings.tls_cert, settings.tls_key)
        except TLSConfigError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None


def serve(host: str | None = None, port: int | None = None, data_dir: Path | None = None,
          tls_cert: Path | None = None, tls_key: Path | None = None) -> None:
    """Run the server in the foreground until interrupted."""
    import logging

    import uvicorn

    from chaser.assembly import create_app
    from chaser.datadir import use_private_umask
    from chaser.errors import InvalidRequest

    settings = server_settings(host, port, data_dir, tls_cert, tls_key)
    use_private_umask()  # everything it creates is its user's only: CHASER_HOME 0700, files 0600
    tls = settings.tls_cert is not None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warning = plain_http_warning(settings.host, tls=tls)
    if warning:
        logging.getLogger("chaser.server").warning(warning)
    app = create_app(settings)
    url = settings.public_url or api_url(settings.host, settings.port, tls=tls)
    given = settings.admin_key.get_secret_value() if settings.admin_key is not None else None
    try:
        ensure_admin_key(app.state.services, url=url, config_file=settings.config_file,
                         echo=lambda line: print(line, flush=True), ca_bundle=settings.tls_cert, given=given)
    except InvalidRequest as exc:
        print(f"error: CHASER_ADMIN_KEY: {exc.message}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    certfile, keyfile = (str(settings.tls_cert), str(settings.tls_key)) if tls else (None, None)
    api = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info",
                                        timeout_graceful_shutdown=30, ssl_certfile=certfile, ssl_keyfile=keyfile))
    if not settings.e2b_ingress_port:
        api.run()
        return
    from chaser.assembly import e2b_ingress

    ingress = uvicorn.Server(uvicorn.Config(e2b_ingress(app), host=settings.host, port=settings.e2b_ingress_port,
                                            log_level="info", lifespan="off", timeout_graceful_shutdown=5,
                                            ssl_certfile=certfile, ssl_keyfile=keyfile))
    with asyncio.Runner(loop_factory=api.config.get_loop_factory()) as runner:
        runner.run(serve_with_ingress(api, ingress))


async def serve_with_ingress(api, ingress) -> None:
    """The API server and the E2B ingress (docs/e2b.md) in one loop: the API's signal handling
    stops both; an ingress that cannot listen (its port taken) stops the API too."""
    task = asyncio.create_task(ingress._serve(), name="e2b-ingress")  # _serve: no signal handlers of its own

    def ended(done: asyncio.Task) -> None:
        if not api.should_exit:
            logging.getLogger("chaser.server").error("the E2B ingress on port %s stopped: stopping the server",
                                                     ingress.config.port)
            api.should_exit = True

    task.add_done_callback(ended)
    try:
        await api.serve()
    finally:
        ingress.should_exit = True
        with contextlib.suppress(BaseException):
            await task


def server_command(
    host: str = typer.Option(None, "--host", help="Address to listen on (env CHASER_HOST; default 127.0.0.1)."),
    port: int = typer.Option(None, "--port", help="Port (env CHASER_PORT; default 8080)."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Data directory (env CHASER_HOME)."),
    tls_cert: Path = typer.Option(None, "--tls-cert", help="PEM certificate (chain) to serve HTTPS with "
                                  "(env CHASER_TLS_CERT; needs --tls-key)."),
    tls_key: Path = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert (env CHASER_TLS_KEY)."),
) -> None:
    """Run the Chaser API server."""
    serve(host, port, data_dir, tls_cert, tls_key)


def split_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` (`[v6]:PORT`) → (host, port); ValueError with the reason."""
    host, sep, port = listen.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen {listen!r} must be HOST:PORT, e.g. 0.0.0.0:8081")
    return host.strip("[]") or "0.0.0.0", int(port)


def node_settings(database_url: str | None, advertise_url: str | None, listen: str | None,
                  data_dir: Path | None, tls_cert: Path | None, tls_key: Path | None,
                  labels: list[str] | None = None):
    """The settings `chaser node` runs with: a shared database, a node token and an advertised URL
    are required; restarts keep VMs (CHASER_KEEP_VMS_ON_EXIT defaults to true on a node)."""
    from pydantic import ValidationError

    from chaser.config import Settings

    overrides: dict = {"local_runtime": True}
    if database_url is not None:
        overrides["database_url"] = database_url
    if advertise_url is not None:
        overrides["advertise_url"] = advertise_url
    if listen is not None:
        overrides["node_listen"] = listen
    if data_dir is not None:
        overrides["home"] = Path(data_dir).expanduser().resolve()
    for name, value in (("tls_cert", tls_cert), ("tls_key", tls_key)):
        if value is not None:
            overrides[name] = Path(value).expanduser().resolve()
    if "CHASER_KEEP_VMS_ON_EXIT" not in os.environ:
        overrides["keep_vms_on_exit"] = True
    try:
        if labels:
            given = {key: value for key, _, value in (label.partition("=") for label in labels)}
            if any("=" not in label for label in labels):
                raise ValueError("--label takes KEY=VALUE")
            overrides["node_labels"] = {**Settings().node_labels, **given}
        settings = Settings(**overrides)
        host, port = split_listen(settings.node_listen)
        settings = settings.model_copy(update={"host": host, "port": port})
    except (ValidationError, ValueError) as exc:
        refuse_configuration(exc)
    missing = [flag for flag, value in (("--database-url (CHASER_DATABASE_URL)", settings.database_url),
                                        ("CHASER_NODE_TOKEN", settings.node_token),
                                        ("--advertise-url (CHASER_ADVERTISE_URL)",
                                         settings.advertise_url or settings.public_url)) if not value]
    if missing:
        print(f"error: chaser node needs {', '.join(missing)}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    check_serving_files(settings)
    return settings


def serve_node(database_url: str | None = None, advertise_url: str | None = None, listen: str | None = None,
               data_dir: Path | None = None, tls_cert: Path | None = None, tls_key: Path | None = None,
               labels: list[str] | None = None) -> None:
    """Run this machine's VM runtime for the API replicas, in the foreground."""
    import uvicorn

    from chaser.assembly import create_app
    from chaser.datadir import use_private_umask

    settings = node_settings(database_url, advertise_url, listen, data_dir, tls_cert, tls_key, labels)
    use_private_umask()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tls = settings.tls_cert is not None
    warning = plain_http_warning(settings.host, tls=tls)
    if warning:
        logging.getLogger("chaser.node").warning(warning.replace("API keys and everything else",
                                                                 "the node token, API keys and everything else"))
    app = create_app(settings, node=True)
    nodes = app.state.services.nodes
    print(f"node {nodes.id} ({nodes.name}) on {api_url(settings.host, settings.port, tls=tls)}, "
          f"advertised as {nodes.advertised_url}", flush=True)
    certfile, keyfile = (str(settings.tls_cert), str(settings.tls_key)) if tls else (None, None)
    uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info",
                                  timeout_graceful_shutdown=30, ssl_certfile=certfile, ssl_keyfile=keyfile)).run()


def node_command(
    database_url: str = typer.Option(None, "--database-url", help="The database shared with the API replicas "
                                     "(env CHASER_DATABASE_URL): postgresql+psycopg://USER:PASSWORD@HOST/DB."),
    advertise_url: str = typer.Option(None, "--advertise-url", help="Where the API replicas reach this node, "
                                      "http(s)://HOST:PORT (env CHASER_ADVERTISE_URL)."),
    listen: str = typer.Option(None, "--listen", help="HOST:PORT to listen on (env CHASER_NODE_LISTEN; "
                               "default 0.0.0.0:8081)."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Data directory: VMs, workspace disks, images "
                                  "(env CHASER_HOME)."),
    tls_cert: Path = typer.Option(None, "--tls-cert", help="PEM certificate to serve HTTPS with "
                                  "(env CHASER_TLS_CERT)."),
    tls_key: Path = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert (env CHASER_TLS_KEY)."),
    labels: list[str] = typer.Option(None, "--label", metavar="KEY=VALUE", help="A label this node registers "
                                     "(repeatable; added to CHASER_NODE_LABELS)."),
) -> None:
    """Run this machine's sandboxes for the API replicas (needs CHASER_NODE_TOKEN)."""
    serve_node(database_url, advertise_url, listen, data_dir, tls_cert, tls_key, labels)


app = typer.Typer(help="Run the API server.", add_completion=False)
app.command("server")(server_command)

if __name__ == "__main__":
    typer.run(server_command)
