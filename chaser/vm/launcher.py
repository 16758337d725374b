"""Starting one QEMU: its network namespace and tap, its cgroup and uid, the
descriptors it gets instead of paths, its console pipe and its QMP connection
(docs/security.md). The runtime decides *which* VM to start; this module how.
"""

from __future__ import annotations

import array
import asyncio
import os
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path

from qemu.qmp import QMPClient

from chaser import errors
from chaser.agent.protocol import AGENT_PORT, BOOT_TOKEN_CHARS, BOOT_TOKEN_FW_CFG
from chaser.config import Settings
from chaser.guest.build import GuestAssets
from chaser.vm import memory
from chaser.vm.agent_client import AgentClient
from chaser.vm.cgroup import Limits, VMCgroup
from chaser.vm.console import ConsoleLog
from chaser.vm.jail import PassedFiles, jail_user_for
from chaser.vm.machine import VirtualMachine
from chaser.vm.network.manager import NetworkManager, SandboxNetwork
from chaser.vm.process import Confinement, kill_process_group, spawn_qemu
from chaser.vm.qemu import MemoryFile, QemuCommand, kernel_args, netdev_tap, netdev_user


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Launcher:
    def __init__(self, settings: Settings, *, network: NetworkManager, cgroups: str | None,
                 outlive: bool = False) -> None:
        self.settings = settings
        self.outlive = outlive  # QEMU outlives this process (a server's: chaser/vm/adopt.py), else dies with it
        self.network = network
        self.cgroups = cgroups
        self._uid_counter = 0
        self._boot_files: dict[Path, int] = {}  # kernel, initramfs → a sealed memfd every QEMU shares

    async def _boot_file(self, path: Path) -> int:
        """The file as a sealed memfd, made once per process (entries are content-addressed: a path
        is one content) and shared by every QEMU: one copy in memory, not one per VM."""
        fd = self._boot_files.get(path)
        if fd is None:
            fd = await asyncio.to_thread(memory.sealed_copy, path)
            self._boot_files[path] = fd
        return fd

    async def launch(
        self,
        vm_id: str,
        vm_dir: Path,
        *,
        assets: GuestAssets,
        accel: str,
        image: Path,
        writable: Path,
        on_stopped: Callable[[VirtualMachine], None],
        memory_fd: int | None = None,
        shared_memory: bool = False,
        anonymous_memory: bool = False,
        incoming: bool = False,
    ) -> VirtualMachine:
        # Every QEMU gets a token of its own, a restored clone included (its memory still
        # holds the template's, which its agent then refuses: chaser/agent/protocol.py).
        boot_token = secrets.token_urlsafe(32)
        assert len(boot_token) == BOOT_TOKEN_CHARS
        last_error = ""
        for _attempt in range(3):  # a slirp host port can be taken between probe and bind
            network: SandboxNetwork | None = None
            cgroup: VMCgroup | None = None
            placeholder: int | None = None
            files = PassedFiles()
            confinement = Confinement(die_with_parent=not self.outlive)
            try:
                if self.network.isolated:
                    network = await self.network.acquire()
                    # A free fd number for the tap, which the child opens inside the namespace.
                    placeholder = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
                    confinement = Confinement(netns=network.netns_path, tap="tap0", tap_fd=placeholder,
                                              die_with_parent=not self.outlive)
                    netdev, agent_address = netdev_tap(placeholder), (network.agent_host, AGENT_PORT)
                    slot = network.slot.index
                else:
                    port = _free_port()
                    netdev = netdev_user(port, restrict=self.network.mode != "slirp")
                    agent_address = ("127.0.0.1", port)
                    self._uid_counter += 1  # unique in this process; slots use the range below 65536
                    slot = 65536 + self._uid_counter
                user = jail_user_for(self.settings, slot)
                if user is not None:
                    confinement.uid, confinement.gid, confinement.groups = user.uid, user.gid, list(user.groups)
                if self.cgroups is not None:
                    cgroup = VMCgroup(vm_id, version=self.cgroups)
                    cgroup.create(self._cgroup_limits())
                    confinement.cgroup_procs = cgroup.procs_files
                # Registered at once: PassedFiles closes it whatever happens next.
                token_file = files.fd_path(memory.secret_file("chaser-boot-token", boot_token.encode()))
                kernel, initramfs = await self._boot_file(assets.kernel), await self._boot_file(assets.initramfs)
                command = QemuCommand(
                    kernel=files.fd_path(kernel),
                    initramfs=files.fd_path(initramfs),
                    os_disk=files.fdset(assets.os_disk, writable=False),
                    image_disk=files.fdset(image, writable=False),
                    writable_disk=files.fdset(writable, writable=True),
                    qmp_fd=files.listening_socket(vm_dir / "qmp.sock"),
                    netdev=netdev,
                    accel=accel,
                    memory_mib=self.settings.memory_mib,
                    vcpus=self.settings.vcpus,
                    kernel_args=kernel_args(),
                    fw_cfg={BOOT_TOKEN_FW_CFG: token_file},
                    memory_file=(MemoryFile(files.fd_path(memory_fd), shared=shared_memory) if memory_fd
                                 else MemoryFile(None) if anonymous_memory else None),
                    incoming=incoming,
                    tcg_tb_size_mib=self.settings.tcg_tb_size_mib,
                    seccomp=self.settings.jail,
                    fd_args=files.qemu_args(),
                )
                # QEMU holds its slot's lock too (the same open file): while it runs, no server
                # reaps or reuses its namespace, ours dead or not (chaser/vm/adopt.py).
                confinement.pass_fds = [*files.all_fds, *([network.slot.lock_fd] if network is not None else [])]
                process = await spawn_qemu(command.argv(), vm_dir=vm_dir, log_path=vm_dir / "qemu.log",
                                           confinement=confinement)
            except BaseException:
                if network is not None:
                    await asyncio.shield(network.release())
                if cgroup is not None:
                    cgroup.remove()
                raise
            finally:
                if placeholder is not None:
                    os.close(placeholder)
                files.close(keep=(*self._boot_files.values(), *((memory_fd,) if memory_fd else ())))
            console = ConsoleLog(self.settings.serial_log_max_bytes)
            assert process.stdout is not None  # spawned with stdout=PIPE
            console.follow(process.stdout)
            qmp = QMPClient(vm_id)
            try:
                await self._connect_qmp(qmp, vm_dir / "qmp.sock", process)
            except BaseException as exc:
                kill_process_group(process.pid)  # no VirtualMachine owns it yet
                await asyncio.shield(process.wait())
                await console.close()
                if network is not None:
                    await asyncio.shield(network.release())
                if cgroup is not None:
                    cgroup.remove()
                if not isinstance(exc, errors.VMCrashed):
                    raise
                last_error = (vm_dir / "qemu.log").read_text(errors="replace")[-2000:]
                if "hostfwd" in last_error or "forwarding" in last_error:
                    continue
                raise errors.VMCrashed(f"QEMU failed to start: {last_error.strip()}") from None
            return VirtualMachine(
                vm_id=vm_id, vm_dir=vm_dir, process=process, qmp=qmp,
                agent=AgentClient(agent_address[1], boot_token, host=agent_address[0]), on_stopped=on_stopped,
                network=network, cgroup=cgroup, console=console,
            )
        raise errors.VMCrashed(f"QEMU failed to start: {last_error.strip()}")

    def _cgroup_limits(self) -> Limits:
        memory = (self.settings.memory_mib + self.settings.vm_memory_overhead_mib) * 1024 * 1024
        return Limits(memory_bytes=memory, vcpus=self.settings.vcpus, pids=self.settings.vm_pids_max)

    async def _connect_qmp(self, qmp: QMPClient, path: Path, process: asyncio.subprocess.Process) -> None:
        deadline = time.monotonic() + 10
        while True:
            if process.returncode is not None:
                raise errors.VMCrashed("QEMU exited during start-up")
            if path.exists():
                try:
                    await qmp.connect(str(path))
                    return
                except Exception:  # noqa: BLE001 - socket not accepting yet
                    pass
            if time.monotonic() > deadline:
                kill_process_group(process.pid)
                await process.wait()
                raise errors.VMCrashed("QEMU did not open its QMP socket")
            try:
                await asyncio.wait_for(process.wait(), 0.02)
            except TimeoutError:
                pass



async def pass_fd(qmp: QMPClient, fd: int, name: str) -> None:
    """Hand QEMU an open file as `fd:name` (SCM_RIGHTS + getfd): a jailed QEMU
    may neither spawn `exec:` helpers nor open our files itself."""
    # Not QMPClient.send_fd_scm: it needs the stdlib socket under asyncio's
    # wrapper, which uvloop (the server's loop) does not have. The write
    # buffer is empty here: every command before this one was answered.
    writer = qmp._writer
    assert writer is not None, "QMP is connected"
    transport_socket = writer.transport.get_extra_info("socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(transport_socket.fileno())) as sock:
        sock.sendmsg([b" "], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
    await qmp.execute("getfd", {"fdname": name})
