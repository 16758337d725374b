"""Suite-wide guard: no QEMU process and no VM directory the suite created may
outlive it. Checked once, by the controlling process, at the very end.

QEMUs are recognised as ours by a marker in their environment, inherited from
this process through test servers: a concurrent run's VMs are left alone."""

from __future__ import annotations

import os
import signal
import stat
import uuid
from pathlib import Path

import pytest

from chaser.config import Settings

RUN_MARKER = "CHASER_TEST_RUN"
VM_DIRS_BEFORE = pytest.StashKey[set]()


def our_qemu_pids() -> set[int]:
    marker = f"{RUN_MARKER}={os.environ.get(RUN_MARKER, '')}".encode()
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"qemu-system" in (entry / "cmdline").read_bytes() and marker in (entry / "environ").read_bytes():
                    pids.add(int(entry.name))
            except OSError:
                pass
    return pids


def vm_dirs() -> set[str]:
    # Only the default home: test servers use temporary homes they delete.
    directory = Settings().vms_dir
    return set(os.listdir(directory)) if directory.is_dir() else set()


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault(RUN_MARKER, uuid.uuid4().hex)  # xdist workers inherit it
    # No guest DNS query of any test may leave this machine: the sandboxes'
    # resolver forwards to its own loopback (refused) unless a test names the
    # resolver of a test namespace it created.
    os.environ.setdefault("CHASER_NETWORK_DNS_SERVERS", '["127.0.0.1"]')
    # Tests stop `chaser forward`/`shell` with SIGINT, as a terminal's Ctrl-C would. A suite started
    # in the background by a non-interactive shell (`cmd &`) inherits SIGINT ignored, and so would
    # every process it starts (an ignored signal stays ignored across exec): restore the default.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def dead_namespaces() -> list[str]:
    """Sandbox network namespaces whose owner is gone (their slot lock is free)."""
    import fcntl

    from chaser.vm.network.namespace import LOCK_DIR, NAME_PREFIX, NETNS_DIR

    found = []
    for entry in NETNS_DIR.glob(f"{NAME_PREFIX}*") if NETNS_DIR.is_dir() else []:
        lock = LOCK_DIR / f"{entry.name[len(NAME_PREFIX):]}.lock"
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            found.append(entry.name)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            found.append(entry.name)
        except BlockingIOError:
            pass  # a live process (another run's server) owns it
        finally:
            os.close(fd)
    return found


def dev_null_is_a_device() -> bool:
    try:
        return stat.S_ISCHR(os.lstat("/dev/null").st_mode)
    except FileNotFoundError:
        return False


@pytest.fixture(autouse=True)
def dev_null_stays_a_device():
    """/dev/null was once found replaced by a regular file after a run: name the test that does it."""
    yield
    if not dev_null_is_a_device():
        Path("/dev/null").unlink(missing_ok=True)
        os.mknod("/dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.chmod("/dev/null", 0o666)
        pytest.fail("/dev/null was no longer a character device after this test (recreated)")


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[VM_DIRS_BEFORE] = vm_dirs()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):
        return  # an xdist worker: the controller checks once everything ended
    leftover = our_qemu_pids()
    stale_dirs = vm_dirs() - session.config.stash.get(VM_DIRS_BEFORE, set())
    namespaces = dead_namespaces()
    if not leftover and not stale_dirs and not namespaces:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter:
        reporter.write_line(f"LEFTOVERS after the suite: QEMU pids {sorted(leftover)}, VM dirs {sorted(stale_dirs)}, "
                            f"network namespaces {namespaces}", red=True)
    for pid in leftover:  # stop what we started, by PID
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
