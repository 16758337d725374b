"""The template snapshots this runtime builds and restores from (the layout on disk is
chaser/vm/template.py), and their RAM as sealed memfds held by this process.

    store = TemplateStore(runtime)
    template = await store.ensure()          # built once per template key, under a file lock
    memory_fd = await store.memory(template)  # what a clone maps privately (chaser/vm/memory.py)

A build boots one guest on placeholder disks with its RAM in a shared memfd, saves the
device state (`x-ignore-shared`: the RAM is not in the stream), then the RAM to a file,
and writes the meta file last. Building a template retires the templates of other keys
that nothing holds (chaser/vm/template.py `hold`: a running clone, a saved state).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING

from chaser.vm import memory, saved
from chaser.vm.disks import create_sparse
from chaser.vm.launcher import pass_fd
from chaser.vm.saved import IGNORE_SHARED
from chaser.vm.template import (
    Template,
    discard_failed_template,
    discard_template,
    load_template,
    retire_other_templates,
    template_key,
)

if TYPE_CHECKING:
    from chaser.vm.runtime import Runtime

log = logging.getLogger(__name__)


class TemplateStore:
    """The templates under `$CHASER_GUEST_DIR/templates/<key>/` and their sealed RAM."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self._lock = asyncio.Lock()
        # Sealed RAM per template (directory and creation time: another process may rebuild a directory).
        self._memory: dict[Template, int] = {}

    @property
    def dir(self) -> Path:
        return self.settings.guest_dir / "templates"

    def current_dir(self) -> Path:
        """The directory of the template for this runtime's inputs (`template_key`)."""
        runtime = self.runtime
        key = template_key(
            fingerprint=runtime.assets.fingerprint,
            memory_mib=self.settings.memory_mib,
            vcpus=self.settings.vcpus,
            accel=runtime.accel,
            image_slot=self.settings.image_slot_bytes,
            writable_slot=self.settings.writable_slot_bytes,
            network=runtime.network.backend,
        )
        return self.dir / key

    async def ensure(self) -> Template:
        """Load the template for the current inputs, building it if missing."""
        directory = self.current_dir()
        template = load_template(directory)
        if template is not None:
            return template
        async with self._lock:
            # A file lock too: several processes (test workers, CLI + server) share a home.
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(self.dir / ".lock", "w") as lock:  # noqa: ASYNC230 - a local lock file
                await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
                try:
                    template = load_template(directory)
                    if template is None:
                        template = await self._build(directory)
                        retire_other_templates(self.dir, keep=directory)
                    return template
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    async def _build(self, directory: Path) -> Template:
        runtime, settings = self.runtime, self.settings
        log.info("building template snapshot in %s", directory)
        discard_template(directory)
        directory.mkdir(parents=True)
        template = Template(dir=directory, created_at=time.time())
        create_sparse(template.image_placeholder, settings.image_slot_bytes)
        create_sparse(template.writable_placeholder, settings.writable_slot_bytes)
        vm_id = f"tpl-{secrets.token_hex(6)}"
        vm_dir = settings.vms_dir / vm_id
        vm_dir.mkdir(parents=True)
        ram_size = settings.memory_mib * 1024 * 1024
        ram = memory.new_memfd("chaser-template", ram_size)
        try:
            vm = await runtime.launch_vm(
                vm_id, vm_dir,
                image=template.image_placeholder, writable=template.writable_placeholder,
                memory_fd=ram, shared_memory=True,
            )
        except BaseException:
            os.close(ram)
            raise
        try:
            await runtime.wait_for_agent(vm, settings.cold_boot_timeout_s)
            qmp = vm.qmp
            await qmp.execute("migrate-set-capabilities", IGNORE_SHARED)
            await qmp.execute("stop")
            with open(template.state_file, "wb") as state:  # noqa: ASYNC230 - opened to pass its descriptor
                await pass_fd(qmp, state.fileno(), "snapshot")
                await qmp.execute("migrate", {"uri": "fd:snapshot"})
                await saved.wait_migration(qmp, what="the template snapshot")
        except BaseException:
            os.close(ram)
            raise
        finally:
            await vm.stop(graceful=False)
        try:
            await asyncio.to_thread(memory.save, ram, template.memory_file, ram_size)
            memory.seal(ram)
        except BaseException:
            os.close(ram)
            raise
        self.forget(directory)
        self._memory[template] = ram
        # Holds no token: the template's died with its QEMU; every clone gets its own.
        template.meta_file.write_text(json.dumps({"created_at": template.created_at}))
        return template

    async def memory(self, template: Template) -> int:
        """`template`'s RAM as a sealed memfd, loaded from its file once per process."""
        fd = self._memory.get(template)
        if fd is None:
            size = self.settings.memory_mib * 1024 * 1024
            fd = await asyncio.to_thread(memory.load_sealed, template.memory_file, size)
            if template in self._memory:  # another restore loaded it meanwhile
                os.close(fd)
                return self._memory[template]
            self._memory[template] = fd
        return fd

    def forget(self, directory: Path) -> None:
        """Running clones keep their own mapping; only our descriptors of `directory`'s RAM go."""
        for template in [t for t in self._memory if t.dir == directory]:
            os.close(self._memory.pop(template))

    def discard_failed(self, template: Template) -> None:
        """After a failed restore: the template goes, unless it was rebuilt meanwhile."""
        if discard_failed_template(template):
            self.forget(template.dir)
