"""Starting QEMU (in a session of its own: it outlives a killed server, which the
next one adopts: chaser/vm/adopt.py), and reaping the ones a dead server left
behind that nobody adopts (each VM directory records its owner and QEMU pid)."""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import json
import logging
import os
import shutil
import signal
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from chaser.vm.cgroup import join_in_child

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
OWNER_FILE = "owner.json"


class QemuProcess(Protocol):
    """What a VM needs of its QEMU process: our child (asyncio's Process) or an adopted one."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    async def wait(self) -> int: ...


@dataclass
class Confinement:
    """Where and as whom QEMU runs: set up in the child between fork and exec,
    so no instruction of QEMU runs outside it."""

    netns: Path | None = None  # enter this network namespace
    tap: str | None = None  # open this tap device there, as fd `tap_fd`
    tap_fd: int | None = None
    cgroup_procs: list[str] = field(default_factory=list)
    uid: int | None = None  # drop to this user (and gid, groups) before exec
    gid: int | None = None
    groups: list[int] = field(default_factory=list)
    pass_fds: list[int] = field(default_factory=list)  # descriptors QEMU inherits
    # SIGKILL when the server dies (dnsmasq); QEMU lives on for the next server to adopt.
    die_with_parent: bool = True


def confine(confinement: Confinement, netns_fd: int | None) -> Callable[[], None]:
    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if netns_fd is not None and libc.setns(netns_fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        if confinement.tap is not None and confinement.tap_fd is not None:
            tun = os.open("/dev/net/tun", os.O_RDWR)
            request = struct.pack("16sH", confinement.tap.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
            fcntl.ioctl(tun, TUNSETIFF, request)
            os.dup2(tun, confinement.tap_fd)
            os.close(tun)
        join_in_child(confinement.cgroup_procs)
        if confinement.uid is not None:
            os.setgroups(confinement.groups)
            os.setgid(confinement.gid if confinement.gid is not None else confinement.uid)
            os.setuid(confinement.uid)
        if confinement.die_with_parent:  # last: a change of credentials clears the parent-death signal
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return preexec


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: tells a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


async def spawn_qemu(argv: list[str], *, vm_dir: Path, log_path: Path,
                     confinement: Confinement | None = None) -> asyncio.subprocess.Process:
    """QEMU as a child in a session of its own (no terminal's Ctrl-C reaches it) that outlives
    us unless `confinement.die_with_parent`; its stdout (the guest console) is a pipe."""
    confinement = confinement or Confinement()
    netns_fd = os.open(confinement.netns, os.O_RDONLY | os.O_CLOEXEC) if confinement.netns else None
    try:
        with open(log_path, "ab") as errors_out:  # noqa: ASYNC230 - opened to hand to the child
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=errors_out,
                start_new_session=True,  # its own process group: we kill the group
                preexec_fn=confine(confinement, netns_fd),
                pass_fds=[*confinement.pass_fds, *([confinement.tap_fd] if confinement.tap_fd is not None else [])],
                limit=1 << 20,
            )
    finally:
        if netns_fd is not None:
            os.close(netns_fd)
    owner = {
        "owner_pid": os.getpid(),
        "owner_start": process_start_time(os.getpid()),
        "qemu_pid": process.pid,
        "qemu_start": process_start_time(process.pid),
    }
    (vm_dir / OWNER_FILE).write_text(json.dumps(owner))
    return process


def write_owner(vm_dir: Path, qemu_pid: int, qemu_start: str | None) -> None:
    """This process owns the QEMU now (an adopted VM): no other Runtime reaps it."""
    owner = {"owner_pid": os.getpid(), "owner_start": process_start_time(os.getpid()),
             "qemu_pid": qemu_pid, "qemu_start": qemu_start}
    temporary = vm_dir / f".{OWNER_FILE}.tmp"
    temporary.write_text(json.dumps(owner))
    os.replace(temporary, vm_dir / OWNER_FILE)


class AdoptedProcess:
    """A QEMU this process did not start (an earlier server did): watched through a pidfd.
    Not our child, so its exit code is unknown (`returncode` stays None)."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdout = None
        self._pidfd = pidfd
        loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = loop.create_future()
        loop.add_reader(pidfd, self._on_exit)

    def _on_exit(self) -> None:
        self.close()
        if not self._exited.done():
            self._exited.set_result(-1)

    def close(self) -> None:
        """Stop watching (idempotent)."""
        if self._pidfd >= 0:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)


def kill_process_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def reap_orphans(vms_dir: Path, *, keep: frozenset[str] = frozenset(),
                 killed: list[tuple[int, str]] | None = None) -> list[str]:
    """Kill QEMUs whose owning process is gone and delete their directories
    (except those named in `keep`: VMs waiting to be adopted). `killed` gets the
    (pid, start time) of each QEMU killed: the caller may wait for their ends."""
    reaped: list[str] = []
    if not vms_dir.is_dir():
        return reaped
    for vm_dir in vms_dir.iterdir():
        if vm_dir.name in keep:
            continue
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
            if killed is not None:
                killed.append((owner["qemu_pid"], owner["qemu_start"]))
        shutil.rmtree(vm_dir, ignore_errors=True)
        reaped.append(vm_dir.name)
    return reaped


def _younger_than(path: Path, seconds: float) -> bool:
    import time

    try:
        return time.time() - path.stat().st_mtime < seconds
    except OSError:
        return False
