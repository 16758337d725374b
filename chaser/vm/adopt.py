"""Adopting the VMs an earlier server process left running.

QEMU runs in a session of its own without a parent-death signal, so it outlives
a server that is killed (or, with CHASER_KEEP_VMS_ON_EXIT, one that exits). What
the next server needs to take it back is in its VM directory, written atomically
(0600) once the session's VM is initialised and whenever its token changes:

    $CHASER_HOME/vms/<vm id>/adopt.json   session id, QEMU pid + start time, agent address + token,
                                          network slot (+ the number of QEMU's copy of its lock),
                                          cgroup, disks, boot method, RAM block, the template
                                          its RAM maps (docs/pause-and-fork.md)
    $CHASER_HOME/vms/<vm id>/qmp.sock     QMP (QEMU accepts a new client after the old one is gone)

At start (`scan`): a directory whose owner is dead and whose QEMU still runs (the
same start time: not a reused pid) waits for its session; one whose QEMU is gone
is lost. `adopt` opens a pidfd (the exit watch of a process that is not our
child), takes a copy of the slot lock from QEMU (pidfd_getfd), connects QMP
(`cont` if the VM was left stopped: a freeze or a save the server died in),
checks the agent answers with the stored token and starts the namespace's
resolver again. Whatever is not adopted is discarded: QEMU killed, namespace,
cgroup and directory removed (`discard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemu.qmp import QMPClient

from chaser.agent.protocol import AGENT_PROTOCOL_VERSION
from chaser.runtime.egress import EgressPolicy
from chaser.vm.agent_client import AgentClient
from chaser.vm.cgroup import VMCgroup
from chaser.vm.console import ConsoleLog
from chaser.vm.machine import VirtualMachine
from chaser.vm.network import namespace
from chaser.vm.network.nftables import HOST_VETH_PREFIX
from chaser.vm.process import OWNER_FILE, AdoptedProcess, kill_process_group, process_start_time, write_owner
from chaser.vm.template import Template

if TYPE_CHECKING:
    from chaser.vm.runtime import Runtime

log = logging.getLogger(__name__)

STATE_FILE = "adopt.json"
SYS_PIDFD_GETFD = 438
ADOPT_AGENT_TIMEOUT_S = 10.0  # a VM that does not answer by then is lost (it would hold up the start)


@dataclass(frozen=True)
class AdoptState:
    """What a later server needs to take a running VM back."""

    vm_id: str
    session_id: str
    qemu_pid: int
    qemu_start: str
    agent_host: str
    agent_port: int
    token: str
    boot_method: str
    ram_block: str
    started_at: float
    disk_quota_bytes: int
    image_disk: str | None = None
    writable_disk: str | None = None
    slot: int | None = None  # the network namespace chaser-<slot>; None: no namespace (slirp)
    subnet: str | None = None
    slot_lock_fd: int | None = None  # the descriptor number of QEMU's copy of the slot lock
    cgroup_version: str | None = None
    agent_protocol: int | None = None  # the guest's agent speaks the protocol of the server that started it
    # The template its RAM maps (VirtualMachine.template); None: none, or written by an older server.
    template_dir: str | None = None
    template_created_at: float | None = None

    @classmethod
    def of(cls, vm: VirtualMachine) -> AdoptState:
        return cls(
            vm_id=vm.id, session_id=vm.session_id, qemu_pid=vm.pid, qemu_start=process_start_time(vm.pid) or "",
            agent_host=vm.agent.host, agent_port=vm.agent.port, token=vm.agent.token,
            boot_method=vm.boot_method, ram_block=vm.ram_block, started_at=vm.started_at,
            disk_quota_bytes=vm.disk_quota_bytes,
            image_disk=str(vm.image_disk) if vm.image_disk else None,
            writable_disk=str(vm.writable_disk) if vm.writable_disk else None,
            slot=vm.network.slot.index if vm.network else None,
            subnet=str(vm.network.slot.subnet) if vm.network else None,
            slot_lock_fd=vm.network.slot.lock_fd if vm.network else None,
            cgroup_version=vm.cgroup.version if vm.cgroup else None,
            agent_protocol=AGENT_PROTOCOL_VERSION,
            template_dir=str(vm.template.dir) if vm.template else None,
            template_created_at=vm.template.created_at if vm.template else None,
        )


def save_state(vm: VirtualMachine) -> None:
    """Written beside the VM (0600: it holds the agent's token), atomically: a reader sees
    the old state or the new one."""
    temporary = vm.dir / f".{STATE_FILE}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(AdoptState.of(vm)), out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, vm.dir / STATE_FILE)


def load_state(vm_dir: Path) -> AdoptState | None:
    try:
        data: dict[str, Any] = json.loads((vm_dir / STATE_FILE).read_text())
        return AdoptState(**data)
    except (OSError, ValueError, TypeError):
        return None


def qemu_alive(pid: int, start: str) -> bool:
    """The same process (not a reused pid) and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0] not in ("Z", "X") and fields[19] == start


def _owner_alive(vm_dir: Path) -> bool:
    try:
        owner = json.loads((vm_dir / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return bool(process_start_time(owner["owner_pid"]) == owner["owner_start"])


def scan(vms_dir: Path) -> tuple[dict[str, AdoptState], dict[str, str]]:
    """VMs of dead owners: (adoptable by session id, lost: session id → why)."""
    adoptable: dict[str, AdoptState] = {}
    lost: dict[str, str] = {}
    if not vms_dir.is_dir():
        return adoptable, lost
    for vm_dir in vms_dir.iterdir():
        state = load_state(vm_dir)
        if state is None or not state.session_id or _owner_alive(vm_dir):
            continue
        if qemu_alive(state.qemu_pid, state.qemu_start):
            earlier = adoptable.get(state.session_id)
            if earlier is None or earlier.started_at < state.started_at:
                adoptable[state.session_id] = state
        else:
            lost[state.session_id] = f"its VM (QEMU pid {state.qemu_pid}) exited while no server was running"
    return adoptable, lost


def _pidfd_getfd(pidfd: int, target_fd: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = int(libc.syscall(SYS_PIDFD_GETFD, pidfd, target_fd, 0))
    if fd < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"pidfd_getfd: {os.strerror(errno)}")
    return fd


async def adopt(runtime: Runtime, state: AdoptState, policy: EgressPolicy) -> VirtualMachine:
    """The VM of `state` as this process's: it answers QMP and its agent the stored token.
    Any failure discards it (nothing of it is left) and raises."""
    vm_dir = runtime.settings.vms_dir / state.vm_id
    if state.agent_protocol != AGENT_PROTOCOL_VERSION:  # an upgrade changed the protocol: it cannot be driven
        await discard(runtime, state)
        raise RuntimeError(f"its agent speaks protocol {state.agent_protocol}, this server {AGENT_PROTOCOL_VERSION}")
    pidfd: int | None = None
    network = None
    try:
        pidfd = os.pidfd_open(state.qemu_pid)
        if not qemu_alive(state.qemu_pid, state.qemu_start):  # checked again now that the pidfd pins it
            raise ProcessLookupError(f"its VM (QEMU pid {state.qemu_pid}) exited while no server was running")
        if state.slot is not None and state.subnet is not None and state.slot_lock_fd is not None:
            lock_fd = _pidfd_getfd(pidfd, state.slot_lock_fd)
            os.set_inheritable(lock_fd, False)
            network = runtime.network.adopt(state.slot, state.subnet, lock_fd)
    except BaseException:
        if pidfd is not None:
            os.close(pidfd)
        await asyncio.shield(discard(runtime, state))  # whatever of it is left
        raise
    process = AdoptedProcess(state.qemu_pid, pidfd)
    qmp = QMPClient(state.vm_id)
    vm = VirtualMachine(
        vm_id=state.vm_id, vm_dir=vm_dir, process=process, qmp=qmp,
        agent=AgentClient(state.agent_port, state.token, host=state.agent_host), on_stopped=runtime.forget,
        network=network, cgroup=VMCgroup(state.vm_id, version=state.cgroup_version) if state.cgroup_version else None,
        console=ConsoleLog(runtime.settings.serial_log_max_bytes),  # the old console pipe died with its reader
    )
    try:
        await vm.guard(asyncio.wait_for(qmp.connect(str(vm_dir / "qmp.sock")), 10))
        await _running(vm)
        # An authenticated call: the stored token works.
        await vm.guard(asyncio.wait_for(vm.agent.processes(), ADOPT_AGENT_TIMEOUT_S))
        if network is not None:
            await network.restart_resolver(policy)
    except BaseException:
        await vm.stop(graceful=False)
        raise
    vm.session_id = state.session_id
    vm.boot_method, vm.ram_block, vm.started_at = state.boot_method, state.ram_block, state.started_at
    vm.disk_quota_bytes = state.disk_quota_bytes
    vm.image_disk = Path(state.image_disk) if state.image_disk else None
    vm.writable_disk = Path(state.writable_disk) if state.writable_disk else None
    if state.template_dir is not None and state.template_created_at is not None:
        vm.template = Template(dir=Path(state.template_dir), created_at=state.template_created_at)
    await asyncio.to_thread(write_owner, vm_dir, state.qemu_pid, state.qemu_start)
    return vm


async def _status(vm: VirtualMachine) -> str:
    answer = await vm.guard(vm.qmp.execute("query-status"))
    return str(answer.get("status")) if isinstance(answer, dict) else ""


async def _running(vm: VirtualMachine) -> None:
    """Running again if the dead server left it stopped: frozen for a disk snapshot, or saving
    for a pause or fork (that save is cancelled; its files are the service's to remove)."""
    qmp = vm.qmp
    status = await _status(vm)
    if status == "running":
        return
    log.warning("VM %s was left stopped (%s): continuing it", vm.id, status)
    await vm.guard(qmp.execute("migrate_cancel"))  # a no-op without a migration
    deadline = time.monotonic() + ADOPT_AGENT_TIMEOUT_S
    while status not in ("paused", "postmigrate", "running"):  # e.g. finish-migrate: the cancel takes effect
        if time.monotonic() > deadline:
            raise TimeoutError(f"the VM stays {status}")
        await asyncio.sleep(0.05)
        status = await _status(vm)
    if status != "running":
        await vm.guard(qmp.execute("cont"))


async def wait_dead(pid: int, start: str, timeout: float = 10.0) -> None:
    """Until the killed QEMU `pid` is gone (its descriptors closed: its slot lock is free)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    process = AdoptedProcess(pid, pidfd)  # a pidfd watch: it is not our child
    try:
        if qemu_alive(pid, start):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), timeout)
    finally:
        process.close()


async def discard(runtime: Runtime, state: AdoptState) -> None:
    """A VM nobody adopts: QEMU killed, then its namespace, cgroup and directory removed."""
    if qemu_alive(state.qemu_pid, state.qemu_start):
        log.warning("killing QEMU pid %s of %s: no session adopted it", state.qemu_pid, state.vm_id)
        kill_process_group(state.qemu_pid)
        await wait_dead(state.qemu_pid, state.qemu_start)
    if state.slot is not None:
        await _remove_namespace(state.slot)
    if state.cgroup_version:
        VMCgroup(state.vm_id, version=state.cgroup_version).remove()
    await asyncio.to_thread(shutil.rmtree, runtime.settings.vms_dir / state.vm_id, ignore_errors=True)


LOCK_RELEASE_WAIT_S = 3.0


async def _remove_namespace(index: int) -> None:
    """Its namespace, unless somebody holds the slot's lock (a server that took the slot since)."""
    namespace.LOCK_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(namespace.LOCK_DIR / f"{index}.lock", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        # A QEMU just killed may hold the lock a moment longer (its memory is torn down first).
        deadline = time.monotonic() + LOCK_RELEASE_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    log.info("namespace %s%s kept: its slot is in use", namespace.NAME_PREFIX, index)
                    return
                await asyncio.sleep(0.05)
        await namespace.remove_namespace(f"{namespace.NAME_PREFIX}{index}", f"{HOST_VETH_PREFIX}{index}")
    finally:
        os.close(fd)
