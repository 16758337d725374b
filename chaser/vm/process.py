"""Starting QEMU as a child that cannot outlive us, and reaping the ones a dead
server left behind (each VM directory records its owner and QEMU pid)."""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import shutil
import signal
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
OWNER_FILE = "owner.json"


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: QEMU gets SIGKILL if we die.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: tells a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


async def spawn_qemu(argv: list[str], *, vm_dir: Path, log_path: Path) -> asyncio.subprocess.Process:
    with open(log_path, "ab") as output:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,  # its own process group: we kill the group
            preexec_fn=_die_with_parent,
        )
    owner = {
        "owner_pid": os.getpid(),
        "owner_start": process_start_time(os.getpid()),
        "qemu_pid": process.pid,
        "qemu_start": process_start_time(process.pid),
    }
    (vm_dir / OWNER_FILE).write_text(json.dumps(owner))
    return process


def kill_process_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def reap_orphans(vms_dir: Path) -> list[str]:
    """Kill QEMUs whose owning process is gone and delete their directories."""
    reaped: list[str] = []
    if not vms_dir.is_dir():
        return reaped
    for vm_dir in vms_dir.iterdir():
        owner_file = vm_dir / OWNER_FILE
        try:
            owner = json.loads(owner_file.read_text())
        except (OSError, ValueError):
            owner = None
        if owner is not None and process_start_time(owner["owner_pid"]) == owner["owner_start"]:
            continue  # its owner still runs
        if owner is None and _younger_than(vm_dir, 60):
            continue  # being created right now
        if owner is not None and process_start_time(owner["qemu_pid"]) == owner["qemu_start"]:
            log.warning("killing orphan QEMU pid %s of %s", owner["qemu_pid"], vm_dir.name)
            kill_process_group(owner["qemu_pid"])
        shutil.rmtree(vm_dir, ignore_errors=True)
        reaped.append(vm_dir.name)
    return reaped


def _younger_than(path: Path, seconds: float) -> bool:
    import time

    try:
        return time.time() - path.stat().st_mtime < seconds
    except OSError:
        return False
