"""Fixtures for tests that boot real microVMs (TCG here). The guest assets and
the template snapshot come from `make setup` under the default CHASER_HOME."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_asyncio

from chaser.config import Settings
from chaser.runtime import VMSpec
from chaser.vm.runtime import Runtime


def qemu_pids_for(directory: Path) -> list[int]:
    """QEMU processes holding files under `directory`."""
    from tests.integration.conftest import qemu_pids_under

    return qemu_pids_under(directory)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def runtime(settings):
    runtime = Runtime(settings)
    await runtime.ensure_template()
    yield runtime
    await runtime.stop_all()
    assert not runtime.vms
    assert not our_qemu_children(), "a QEMU started by the tests is still running"


def our_qemu_children() -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"qemu-system" in cmdline:
            children.append(int(entry.name))
    return children


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def vm(runtime):
    """One restored VM shared by the tests of a module."""
    machine = await runtime.start(VMSpec(image_disk=runtime.base_image_disk, session_id="shared"))
    yield machine
    await machine.stop()
    assert not qemu_pids_for(machine.dir), "QEMU outlived its VM"
    assert not machine.dir.exists()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
