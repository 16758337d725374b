"""How a new VM comes up: a clone restored from the template snapshot, else a cold boot.

A clone maps the template's RAM privately (copy-on-write), loads only the device
state (`-incoming`), `cont`s and waits for its agent. A restore that fails discards
the template (chaser/vm/template_store.py) and the caller boots cold; the next
start builds the template again.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from chaser.vm.launcher import pass_fd
from chaser.vm.machine import VirtualMachine
from chaser.vm.saved import IGNORE_SHARED
from chaser.vm.template import Template, hold

if TYPE_CHECKING:
    from chaser.vm.runtime import Runtime

log = logging.getLogger(__name__)


async def restore_clone(runtime: Runtime, vm_id: str, vm_dir: Path, template: Template, image: Path,
                        writable: Path) -> VirtualMachine | None:
    """Restore a clone of the template; None (and the template discarded)
    when the snapshot does not restore, so the caller boots cold."""
    vm = None
    try:
        vm = await runtime.launch_vm(
            vm_id, vm_dir, image=image, writable=writable,
            memory_fd=await runtime.templates.memory(template), shared_memory=False, incoming=True,
        )
        qmp = vm.qmp
        await qmp.execute("migrate-set-capabilities", IGNORE_SHARED)
        with open(template.state_file, "rb") as state:  # noqa: ASYNC230 - opened to pass its descriptor
            await pass_fd(qmp, state.fileno(), "snapshot")
        await qmp.execute("migrate-incoming", {"uri": "fd:snapshot"})
        await runtime.wait_loaded(vm)
        await qmp.execute("cont")
        await runtime.wait_for_agent(vm, runtime.settings.restore_timeout_s)
        vm.boot_method = "template"
        vm.template = template  # a save filters against it (chaser/vm/suspend.py)
        await asyncio.to_thread(hold, template, vm_dir)  # not retired while the VM runs
        return vm
    except asyncio.CancelledError:
        if vm is not None:
            await vm.stop(graceful=False)
        raise
    except Exception as exc:  # noqa: BLE001 - any failure means: boot cold
        log.warning("template restore failed (%s); discarding it and booting cold", exc)
        if vm is not None:
            await vm.stop(graceful=False)
        runtime.templates.discard_failed(template)
        return None


async def cold_boot(runtime: Runtime, vm_id: str, vm_dir: Path, image: Path, writable: Path) -> VirtualMachine:
    vm = await runtime.launch_vm(vm_id, vm_dir, image=image, writable=writable)
    try:
        await runtime.wait_for_agent(vm, runtime.settings.cold_boot_timeout_s)
    except BaseException:
        await vm.stop(graceful=False)
        raise
    vm.boot_method = "cold"
    return vm
