"""Suite-wide guard: no QEMU process and no VM directory the suite created may
outlive it. Checked once, by the controlling process, at the very end."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from chaser.config import Settings


def qemu_pids() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"qemu-system" in (entry / "cmdline").read_bytes():
                    pids.add(int(entry.name))
            except OSError:
                pass
    return pids


def vm_dirs() -> set[str]:
    directory = Settings().vms_dir
    return set(os.listdir(directory)) if directory.is_dir() else set()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash["qemu_before"] = qemu_pids()
    session.config.stash["vm_dirs_before"] = vm_dirs()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):
        return  # an xdist worker: the controller checks once everything ended
    leftover = qemu_pids() - session.config.stash.get("qemu_before", set())
    stale_dirs = vm_dirs() - session.config.stash.get("vm_dirs_before", set())
    if not leftover and not stale_dirs:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter:
        reporter.write_line(f"LEFTOVERS after the suite: QEMU pids {sorted(leftover)}, VM dirs {sorted(stale_dirs)}", red=True)
    for pid in leftover:  # stop what we started, by PID
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
