"""`chaser images …`: the local image store of this host (pull, list, rm, prune).

These commands work on the store directly (like `chaser guest build`), so they
run on the server's machine; local sources (`oci:`, `oci-archive:`,
`docker-archive:`) are always allowed here."""

from __future__ import annotations

from typing import Any

import typer

from chaser.cli.commands._common import JSON_OPTION_HELP, WIDE_OPTION_HELP, fail, print_json

app = typer.Typer(help="OCI images cached on this host (pulled and converted to erofs disks).",
                  no_args_is_help=True)


SHORT_DIGEST_CHARS = len("sha256:") + 12  # as `docker images` shows them; `rm` takes a unique prefix


def _store():
    """The store's blocking operations: these commands run without an event loop."""
    from chaser.config import get_settings
    from chaser.datadir import make_private, use_private_umask
    from chaser.images import ImageStore

    settings = get_settings()
    use_private_umask()  # what it writes under CHASER_HOME is the server's user's only
    make_private(settings.home)
    return ImageStore(settings).blocking


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return str(n)


def _run(fn):
    from chaser.errors import ChaserError

    try:
        return fn()
    except ChaserError as exc:
        fail(exc.code, exc.message)
    except KeyboardInterrupt:
        fail("interrupted", "interrupted", exit_code=130)


def _resolved(img) -> dict[str, Any]:
    return {"ref": img.reference, "digest": img.digest, "disk": str(img.disk), "size": img.size_bytes,
            "config": img.config.to_dict()}


@app.command("pull")
def pull(
    ref: str = typer.Argument(
        ..., help="Image reference (python:3.12, host/repo@sha256:…, oci-archive:FILE, chaser/base)."
    ),
    json_output: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Pull an image (or import a local one) and convert it to a disk; cached by digest."""
    import time

    store = _store()
    started = time.monotonic()

    if json_output:
        img = _run(lambda: store.pull(ref, allow_local=True))
        print_json(_resolved(img))
        return

    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(f"resolving {ref}", total=None)

        def on_progress(event) -> None:
            bar.update(task, description=str(event), total=event.total, completed=event.current or 0)

        img = _run(lambda: store.pull(ref, progress=on_progress, allow_local=True))
    elapsed = time.monotonic() - started
    console.print(f"[bold]{img.reference}[/bold] {img.digest} ({_human(img.size_bytes)}, {elapsed:.1f}s)",
                  highlight=False)
    print(img.disk)


@app.command("list")
def list_images(json_output: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
                wide: bool = typer.Option(False, "--wide", help=WIDE_OPTION_HELP)) -> None:
    """Images in the local store (digests shortened to sha256: + 12 hex; --wide for full ones)."""
    rows = _run(lambda: _store().list())
    if json_output:
        print_json(rows)
        return
    from chaser.cli.commands._common import print_table

    print_table(
        [{**r, "ref": r["ref"] or "<none>", "digest": r["digest"] if wide else r["digest"][:SHORT_DIGEST_CHARS],
          "size": _human(r["size"])} for r in rows],
        [("ref", "REF"), ("digest", "DIGEST"), ("size", "SIZE"), ("last_used", "LAST USED")],
        empty="no images", wide=wide,
    )


@app.command("rm")
def remove(
    ref: str = typer.Argument(..., help="Reference or digest (sha256:…, or a unique prefix of one)."),
    json_output: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Remove an image reference; the disk is deleted when no other reference uses it.

    Sessions already running keep their open disk."""
    if ref.startswith("sha256:") and len(ref) < len("sha256:") + 64:
        matches = sorted({r["digest"] for r in _run(lambda: _store().list()) if r["digest"].startswith(ref)})
        if len(matches) > 1:
            fail("ambiguous_digest", f"{ref} is the start of {len(matches)} image digests: give more of it")
        ref = matches[0] if matches else ref
    removed = _run(lambda: _store().remove(ref))
    if json_output:
        print_json({"ref": ref, "deleted": removed})
    else:
        print(f"deleted {', '.join(removed)}" if removed else f"untagged {ref}")


@app.command("prune")
def prune(
    budget: int = typer.Option(None, "--budget", help="Size budget in bytes (default: image_cache_budget_bytes)."),
    json_output: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Delete least recently used images until the store fits its size budget."""
    removed = _run(lambda: _store().prune(budget_bytes=budget))
    if json_output:
        print_json({"deleted": removed})
    else:
        print(f"deleted {len(removed)} image(s)" + (": " + ", ".join(removed) if removed else ""))
