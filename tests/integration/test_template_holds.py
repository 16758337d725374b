"""A VM remembers the template it was restored from (docs/pause-and-fork.md, "Which template"):
real VMs of the shared runtime. The logic with fakes: tests/unit/test_template_holds.py."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from types import SimpleNamespace

import pytest

from chaser import errors
from chaser.diskcopy import copy_disk
from chaser.vm import suspend
from chaser.vm.runtime import VMSpec
from chaser.vm.saved import SavedState
from chaser.vm.template import Template, held

pytestmark = [pytest.mark.vm, pytest.mark.asyncio(loop_scope="session")]


async def test_a_fork_is_filtered_against_the_vms_template_and_holds_it(runtime, vm, tmp_path):
    template = await runtime.ensure_template()
    assert vm.boot_method in ("template", "pool") and vm.template == template
    assert held(template.dir)  # the running VM holds it: building another key does not retire it
    state = runtime.settings.sessions_dir / f"test-holds-{os.getpid()}"
    fork = None
    try:
        disk = await runtime.save(vm, state, keep_running=True)
        meta = SavedState(state).meta()
        assert meta["filtered"] and meta["template"] == template.key
        assert meta["template_created_at"] == template.created_at
        assert any(link.resolve() == state.resolve() for link in template.holds_dir.iterdir())
        copy = tmp_path / "fork.img"
        await asyncio.to_thread(copy_disk, disk, copy)
        fork = await runtime.resume(VMSpec(image_disk=runtime.base_image_disk, writable_disk=copy,
                                           session_id="fork-holds"), state, hostname="fork-holds")
        assert fork.template == template
        await suspend._check_memory_size(runtime, fork)  # QEMU answers its RAM size: this server's
        doubled = SimpleNamespace(settings=SimpleNamespace(memory_mib=runtime.settings.memory_mib * 2))
        with pytest.raises(errors.SnapshotIncompatible, match="MiB of RAM"):
            await suspend._check_memory_size(doubled, fork)  # type: ignore[arg-type]
        # Made for other settings (an adopted VM after a restart): refused before anything stops.
        fork.template = Template(dir=runtime.templates_dir / "another-key", created_at=1.0)
        with pytest.raises(errors.SnapshotIncompatible, match="another-key"):
            await runtime.save(fork, tmp_path / "refused", keep_running=False)
        assert fork.alive
        assert base64.b64decode((await fork.exec("hostname"))["output"]).decode().strip() == "fork-holds"
    finally:
        if fork is not None:
            await fork.stop(graceful=False)
        await asyncio.to_thread(shutil.rmtree, state, True)
