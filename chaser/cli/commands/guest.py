"""`chaser guest …`: build the guest kernel/initramfs/OS and the template snapshot."""

from __future__ import annotations

import typer

app = typer.Typer(help="Guest assets (kernel, initramfs, guest OS, template snapshot).", no_args_is_help=True)


@app.command("build")
def build(
    template: bool = typer.Option(False, "--template", help="Also boot the guest once and save the template snapshot."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when the cache is current."),
) -> None:
    """Build (or reuse from cache) the guest assets."""
    import asyncio
    import time

    from rich.console import Console

    from chaser.config import get_settings
    from chaser.datadir import make_private, use_private_umask
    from chaser.guest.build import build_guest_assets

    console = Console(stderr=True)
    settings = get_settings()
    use_private_umask()  # what it writes under CHASER_HOME is the server's user's only
    make_private(settings.home)
    started = time.monotonic()
    with console.status("building guest assets…") as status:
        assets = build_guest_assets(settings, progress=lambda line: status.update(line), force=force)
    console.print(f"guest assets ready ({time.monotonic() - started:.1f}s): kernel {assets.kernel_version}")
    if template:
        from chaser.vm.runtime import Runtime

        async def make_template() -> str:
            runtime = Runtime(settings, assets)
            template = await runtime.ensure_template()
            return f"{template.dir.name} (accel {runtime.accel})"

        started = time.monotonic()
        with console.status("template snapshot…"):
            name = asyncio.run(make_template())
        console.print(f"template snapshot ready ({time.monotonic() - started:.1f}s): {name}")
