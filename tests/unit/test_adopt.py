"""The adoption state file (chaser/vm/adopt.py): written 0600 and atomically, and how a
start sorts the VMs a dead server left: adoptable (QEMU alive, the same start time),
lost (QEMU gone, or its pid reused), or not ours to touch (the owner still runs).
The real thing (QEMU, QMP, agent, namespaces): tests/integration/test_adopt.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
from dataclasses import asdict
from pathlib import Path

from chaser.vm import adopt
from chaser.vm.process import OWNER_FILE, AdoptedProcess, process_start_time


def write_vm(vms: Path, name: str, *, session_id: str, pid: int, start: str, owner_pid: int,
             owner_start: str | None) -> Path:
    vm_dir = vms / name
    vm_dir.mkdir(parents=True)
    state = adopt.AdoptState(vm_id=name, session_id=session_id, qemu_pid=pid, qemu_start=start,
                             agent_host="10.200.0.2", agent_port=8420, token="t", boot_method="template",
                             ram_block="mem", started_at=1.0, disk_quota_bytes=1)
    (vm_dir / adopt.STATE_FILE).write_text(json.dumps(asdict(state)))
    (vm_dir / OWNER_FILE).write_text(json.dumps({"owner_pid": owner_pid, "owner_start": owner_start,
                                                 "qemu_pid": pid, "qemu_start": start}))
    return vm_dir


class FakeVM:
    """The fields AdoptState.of reads."""

    def __init__(self, vm_dir: Path) -> None:
        self.id, self.dir, self.session_id, self.pid = vm_dir.name, vm_dir, "ses_1", os.getpid()
        self.agent = type("Agent", (), {"host": "127.0.0.1", "port": 5000, "token": "secret"})()
        self.boot_method, self.ram_block, self.started_at, self.disk_quota_bytes = "cold", "builtin", 2.0, 3
        self.image_disk = self.writable_disk = self.network = self.cgroup = self.template = None


def test_state_file_is_private_and_replaced_whole(tmp_path):
    vm_dir = tmp_path / "vm-1"
    vm_dir.mkdir()
    adopt.save_state(FakeVM(vm_dir))  # type: ignore[arg-type]
    path = vm_dir / adopt.STATE_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    state = adopt.load_state(vm_dir)
    assert state is not None and state.token == "secret" and state.qemu_start == process_start_time(os.getpid())
    assert state.agent_protocol is not None
    assert [p.name for p in vm_dir.iterdir()] == [adopt.STATE_FILE]  # no temporary file left
    path.write_text("{not json")
    assert adopt.load_state(vm_dir) is None


def test_scan_sorts_adoptable_lost_and_owned(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        alive_start = process_start_time(sleeper.pid)
        assert alive_start is not None
        gone_owner = (dead.pid, "1")  # a dead server
        write_vm(tmp_path, "vm-alive", session_id="ses_a", pid=sleeper.pid, start=alive_start,
                 owner_pid=gone_owner[0], owner_start=gone_owner[1])
        write_vm(tmp_path, "vm-gone", session_id="ses_b", pid=dead.pid, start="1",
                 owner_pid=gone_owner[0], owner_start=gone_owner[1])
        write_vm(tmp_path, "vm-reused", session_id="ses_c", pid=sleeper.pid, start="1",  # another start time
                 owner_pid=gone_owner[0], owner_start=gone_owner[1])
        write_vm(tmp_path, "vm-owned", session_id="ses_d", pid=sleeper.pid, start=alive_start,
                 owner_pid=os.getpid(), owner_start=process_start_time(os.getpid()))
        adoptable, lost = adopt.scan(tmp_path)
        assert {s: state.vm_id for s, state in adoptable.items()} == {"ses_a": "vm-alive"}
        assert sorted(lost) == ["ses_b", "ses_c"]
        assert "exited while no server was running" in lost["ses_b"]
    finally:
        sleeper.kill()
        sleeper.wait()



async def test_an_adopted_process_exit_is_noticed_through_its_pidfd():
    sleeper = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        process = AdoptedProcess(sleeper.pid, os.pidfd_open(sleeper.pid))
        waiting = asyncio.ensure_future(process.wait())
        await asyncio.sleep(0)
        assert not waiting.done()
        os.kill(sleeper.pid, signal.SIGKILL)
        assert await asyncio.wait_for(waiting, 10) == -1 and process.returncode is None  # no exit code: not ours
        process.close()  # idempotent
    finally:
        if sleeper.returncode is None:
            sleeper.kill()
        await sleeper.wait()
