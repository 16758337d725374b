"""Template snapshot life cycle in a private CHASER_HOME: build, corrupt, fall
back to a cold boot, rebuild."""

from __future__ import annotations

import base64
import shutil
import tempfile
from pathlib import Path

import pytest

from chaser.config import Settings
from chaser.runtime import VMSpec
from chaser.vm.runtime import Runtime
from chaser.vm.template import load_template

pytestmark = [pytest.mark.vm, pytest.mark.asyncio(loop_scope="session")]


@pytest.fixture
def private_settings():
    # Short path: QMP unix-socket paths must stay under 108 bytes.
    home = Path(tempfile.mkdtemp(prefix="chtpl-", dir="/tmp"))
    (home / "guest").mkdir()
    shutil.copy(Settings().guest_dir / "current.json", home / "guest" / "current.json")
    yield Settings(home=home, warm_pool_size=0)  # no pool: each start shows its own boot path
    shutil.rmtree(home, ignore_errors=True)


async def test_corrupt_snapshot_falls_back_to_cold_boot_then_rebuilds(private_settings):
    runtime = Runtime(private_settings)
    try:
        template = await runtime.ensure_template()
        template.state_file.write_bytes(b"not a migration stream")

        vm = await runtime.start(VMSpec(image_disk=runtime.base_image_disk))
        assert vm.boot_method == "cold"
        result = await vm.exec("echo cold-ok")
        assert base64.b64decode(result["output"]) == b"cold-ok\n"
        assert load_template(template.dir) is None  # the bad snapshot was discarded
        await vm.stop()

        vm = await runtime.start(VMSpec(image_disk=runtime.base_image_disk))
        assert vm.boot_method == "template"  # rebuilt on demand
        assert load_template(template.dir) is not None
        result = await vm.exec("echo warm-ok")
        assert base64.b64decode(result["output"]) == b"warm-ok\n"
        await vm.stop()
    finally:
        await runtime.stop_all()
    assert not list(private_settings.vms_dir.iterdir())
