"""Runtime: starts microVMs from the template snapshot (or cold) and tracks them.

    runtime = Runtime(settings)
    vm = await runtime.start(VMSpec(image_disk=..., session_id="s-1"))
    result = await vm.exec("echo hi")
    await vm.stop()
"""

from __future__ import annotations

import array
import asyncio
import base64
import fcntl
import json
import logging
import os
import secrets
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from qemu.qmp import QMPClient

from chaser import errors
from chaser.config import Settings
from chaser.agent.protocol import IMAGE_DISK_SERIAL, WRITABLE_DISK_SERIAL
from chaser.vm.accel import resolve_accel
from chaser.agent.protocol import AGENT_PORT
from chaser.vm.admission import Admission
from chaser.vm.agent_client import AgentClient
from chaser.vm.cgroup import Limits, VMCgroup, detect as detect_cgroups, reap_empty
from chaser.vm.console import ConsoleLog
from chaser.vm import memory
from chaser.vm.jail import PassedFiles, jail_user_for
from chaser.vm.network.manager import NetworkManager, SandboxNetwork
from chaser.vm.qemu import MemoryFile
from chaser.vm.disks import create_sparse, create_writable_disk, pad_to_slot
from chaser.vm.machine import VirtualMachine
from chaser.vm.network.policy import EgressPolicy
from chaser.vm.pool import WarmPool
from chaser.vm.process import Confinement, kill_process_group, reap_orphans, spawn_qemu
from chaser.vm.qemu import QemuCommand, kernel_args, netdev_tap, netdev_user
from chaser.vm.template import (
    Template,
    discard_failed_template,
    discard_template,
    load_template,
    retire_other_templates,
    template_key,
)

log = logging.getLogger(__name__)
BootMethod = Literal["auto", "template", "cold"]


@dataclass
class VMSpec:
    image_disk: Path
    # None: an ephemeral writable disk inside the VM directory, deleted with the VM.
    writable_disk: Path | None = None
    writable_size_bytes: int | None = None
    session_id: str = ""
    env: dict[str, str] = field(default_factory=dict)
    hostname: str = "sandbox"
    user: str | None = None
    workdir: str | None = None
    boot: BootMethod = "auto"
    # None: the default policy (internet per CHASER_NETWORK_INTERNET_DEFAULT).
    network: EgressPolicy | None = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Runtime:
    def __init__(self, settings: Settings, assets=None) -> None:
        self.settings = settings
        self._assets = assets
        self._accel: str | None = None
        self.vms: dict[str, VirtualMachine] = {}
        self._template_lock = asyncio.Lock()
        self.pool = WarmPool(self, settings.warm_pool_size)
        settings.vms_dir.mkdir(parents=True, exist_ok=True)
        reaped = reap_orphans(settings.vms_dir)
        if reaped:
            log.warning("reaped %d VMs left by a dead process", len(reaped))
        self.network = NetworkManager(settings)
        # Sealed template RAM per template directory (chaser/vm/memory.py).
        self._template_memory: dict[Path, int] = {}
        self._uid_counter = 0
        self.cgroups = detect_cgroups() if settings.jail else None
        self.admission = Admission(settings)
        self._starting = 0  # start() calls between admission and a running VM
        log.info("admission limits: %s", self.admission.describe())
        reap_empty(self.cgroups)
        log.info("network: %s (%s); cgroups: %s; QEMU: %s", self.network.mode, self.network.reason,
                 self.cgroups or "none", "jailed" if jail_user_for(settings, 0) else "not jailed (CHASER_JAIL=false or not root)")
        if self.network.mode == "slirp":
            log.warning("CHASER_NETWORK=slirp: sandboxes can reach this host's loopback services (development only)")
        elif self.network.mode == "none":
            log.warning("sandboxes get no network beyond the agent channel: %s", self.network.reason)

    # --- configuration resolved on first use ---
    @property
    def assets(self):
        if self._assets is None:
            from chaser.guest.build import load_guest_assets

            self._assets = load_guest_assets(self.settings)
        return self._assets

    @property
    def accel(self) -> str:
        if self._accel is None:
            self._accel = resolve_accel(
                self.settings.accel,
                kernel=self.assets.kernel,
                initramfs=self.assets.initramfs,
                cache_dir=self.settings.guest_dir,
            )
        return self._accel

    @property
    def templates_dir(self) -> Path:
        return self.settings.guest_dir / "templates"

    def template_dir(self) -> Path:
        key = template_key(
            fingerprint=self.assets.fingerprint,
            memory_mib=self.settings.memory_mib,
            vcpus=self.settings.vcpus,
            accel=self.accel,
            image_slot=self.settings.image_slot_bytes,
            writable_slot=self.settings.writable_slot_bytes,
            network=self.network.backend,
        )
        return self.templates_dir / key

    # --- public API ---
    async def prepare_host(self) -> None:
        """Host set-up before the first VM: the host nftables table, and the
        namespaces a killed server left behind are removed (QEMUs and VM
        directories were reaped in __init__)."""
        await self.network.start()

    def check_capacity(self) -> None:
        """503 capacity_exhausted (with Retry-After) when the host cannot take
        one more session VM: session limit, host memory, disk (chaser/vm/admission.py)."""
        running = [vm for vm in self.vms.values() if vm.session_id]
        growth = sum(vm.disk_growth_bytes() for vm in self.vms.values()) // (1024 * 1024)
        self.admission.check(running_sessions=len(running), starting=self._starting, disk_growth_mib=growth)

    async def start(self, spec: VMSpec) -> VirtualMachine:
        """A VM for `spec`, initialised for its session: from the warm pool when
        the spec allows, else restored from the template, else cold booted."""
        self.check_capacity()  # again here: concurrent creates must not overshoot
        self._starting += 1
        try:
            return await self._start(spec)
        finally:
            self._starting -= 1

    async def _start(self, spec: VMSpec) -> VirtualMachine:
        started = time.monotonic()
        if self.pool.image is None and self.pool.eligible_shape(spec):
            self.pool.start(spec.image_disk)  # the first plain request names the default image
        vm = self.pool.take(spec)
        if vm is None:
            vm = await self.boot(spec)
        try:
            init = self._init_payload(spec)
            policy = spec.network or EgressPolicy(internet=self.settings.network_internet_default)
            await asyncio.gather(vm.guard(vm.agent.init(init)), vm.apply_network(policy))
            vm.agent.set_token(init["token"])  # the boot token is dead from here on
        except BaseException:
            await vm.stop(graceful=False)
            raise
        vm.session_id = spec.session_id
        vm.boot_ms = (time.monotonic() - started) * 1000
        return vm

    def warm_pool(self, image: Path) -> None:
        """Start keeping VMs of `image` ready (see chaser/vm/pool.py)."""
        self.pool.start(image)

    async def boot(self, spec: VMSpec) -> VirtualMachine:
        """A running VM whose agent answers, not yet initialised."""
        pad_to_slot(spec.image_disk, self.settings.image_slot_bytes)
        vm_id = f"vm-{secrets.token_hex(6)}"
        vm_dir = self.settings.vms_dir / vm_id
        vm_dir.mkdir(parents=True)
        vm: VirtualMachine | None = None
        try:
            writable = await self._prepare_writable(spec, vm_dir)
            if spec.boot != "cold" and self.settings.use_template:
                template = await self.ensure_template()
                vm = await self._restore(vm_id, vm_dir, template, spec.image_disk, writable)
                if vm is None and spec.boot == "template":
                    raise errors.BootTimeout("restoring the template snapshot failed")
            if vm is None:
                writable = await self._prepare_writable(spec, vm_dir)  # a failed restore removed the VM dir
                vm = await self._cold_boot(vm_id, vm_dir, spec.image_disk, writable)
        except BaseException:
            if vm is not None:
                await vm.stop(graceful=False)
            else:
                _remove_dir(vm_dir)
            raise
        vm.writable_disk = writable
        vm.disk_quota_bytes = spec.writable_size_bytes or self.settings.writable_size_bytes
        self.vms[vm_id] = vm
        return vm

    async def stop_all(self, *, graceful: bool = False) -> None:
        await self.pool.close()
        await asyncio.gather(*(vm.stop(graceful=graceful) for vm in list(self.vms.values())), return_exceptions=True)
        await self.network.close()

    async def ensure_template(self) -> Template:
        """Load the template for the current inputs, building it if missing."""
        directory = self.template_dir()
        template = load_template(directory)
        if template is not None:
            return template
        async with self._template_lock:
            # A file lock too: several processes (test workers, CLI + server) share a home.
            self.templates_dir.mkdir(parents=True, exist_ok=True)
            with open(self.templates_dir / ".lock", "w") as lock:
                await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
                try:
                    template = load_template(directory)
                    if template is None:
                        template = await self._build_template(directory)
                        retire_other_templates(self.templates_dir, keep=directory)
                    return template
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    # --- internals ---
    async def _prepare_writable(self, spec: VMSpec, vm_dir: Path) -> Path:
        vm_dir.mkdir(parents=True, exist_ok=True)
        writable = spec.writable_disk or vm_dir / "writable.img"
        if not writable.exists():
            size = spec.writable_size_bytes or self.settings.writable_size_bytes
            await asyncio.to_thread(
                create_writable_disk, writable, size_bytes=size, slot_bytes=self.settings.writable_slot_bytes
            )
        else:
            pad_to_slot(writable, self.settings.writable_slot_bytes)
        return writable

    async def _build_template(self, directory: Path) -> Template:
        log.info("building template snapshot in %s", directory)
        discard_template(directory)
        directory.mkdir(parents=True)
        template = Template(dir=directory, token=secrets.token_urlsafe(24))
        create_sparse(template.image_placeholder, self.settings.image_slot_bytes)
        create_sparse(template.writable_placeholder, self.settings.writable_slot_bytes)
        vm_id = f"tpl-{secrets.token_hex(6)}"
        vm_dir = self.settings.vms_dir / vm_id
        vm_dir.mkdir(parents=True)
        ram_size = self.settings.memory_mib * 1024 * 1024
        ram = memory.new_memfd("chaser-template", ram_size)
        try:
            vm = await self._launch(
                vm_id, vm_dir,
                image=template.image_placeholder, writable=template.writable_placeholder,
                token=template.token, memory_fd=ram, shared_memory=True,
            )
        except BaseException:
            os.close(ram)
            raise
        try:
            await self._wait_for_agent(vm, self.settings.cold_boot_timeout_s)
            qmp = vm.qmp
            await qmp.execute("migrate-set-capabilities", {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})
            await qmp.execute("stop")
            with open(template.state_file, "wb") as state:
                await _pass_fd(qmp, state.fileno(), "snapshot")
                await qmp.execute("migrate", {"uri": "fd:snapshot"})
                await self._wait_migration(qmp)
        except BaseException:
            os.close(ram)
            raise
        finally:
            await vm.stop(graceful=False)
        try:
            await asyncio.to_thread(memory.save, ram, template.memory_file, ram_size)
            memory.seal(ram)
        except BaseException:
            os.close(ram)
            raise
        self._forget_template_memory(directory)
        self._template_memory[directory] = ram
        template.meta_file.write_text(json.dumps({"token": template.token, "created_at": time.time()}))
        return template

    async def _sealed_template_memory(self, template: Template) -> int:
        fd = self._template_memory.get(template.dir)
        if fd is None:
            size = self.settings.memory_mib * 1024 * 1024
            fd = await asyncio.to_thread(memory.load_sealed, template.memory_file, size)
            if template.dir in self._template_memory:  # another restore loaded it meanwhile
                os.close(fd)
                return self._template_memory[template.dir]
            self._template_memory[template.dir] = fd
        return fd

    def _forget_template_memory(self, directory: Path) -> None:
        """Running clones keep their own mapping; only our descriptor goes."""
        fd = self._template_memory.pop(directory, None)
        if fd is not None:
            os.close(fd)

    @staticmethod
    async def _wait_migration(qmp: QMPClient) -> None:
        while True:
            status = (await qmp.execute("query-migrate")).get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise errors.SandboxRuntimeError(f"template snapshot failed: {status}")
            await asyncio.sleep(0.02)

    async def _restore(self, vm_id: str, vm_dir: Path, template: Template, image: Path, writable: Path) -> VirtualMachine | None:
        """Restore a clone of the template; None (and the template discarded)
        when the snapshot does not restore, so the caller boots cold."""
        vm = None
        try:
            vm = await self._launch(
                vm_id, vm_dir, image=image, writable=writable, token=template.token,
                memory_fd=await self._sealed_template_memory(template), shared_memory=False, incoming=True,
            )
            qmp = vm.qmp
            await qmp.execute("migrate-set-capabilities", {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})
            with open(template.state_file, "rb") as state:
                await _pass_fd(qmp, state.fileno(), "snapshot")
            await qmp.execute("migrate-incoming", {"uri": "fd:snapshot"})
            deadline = time.monotonic() + self.settings.restore_timeout_s
            while (await vm.guard(qmp.execute("query-status")))["status"] != "paused":
                if time.monotonic() > deadline:
                    raise errors.BootTimeout("snapshot did not load in time")
                await asyncio.sleep(0.01)
            await qmp.execute("cont")
            await self._wait_for_agent(vm, self.settings.restore_timeout_s)
            vm.boot_method = "template"
            return vm
        except asyncio.CancelledError:
            if vm is not None:
                await vm.stop(graceful=False)
            raise
        except Exception as exc:  # noqa: BLE001 - any failure means: boot cold
            log.warning("template restore failed (%s); discarding it and booting cold", exc)
            if vm is not None:
                await vm.stop(graceful=False)
            if discard_failed_template(template):
                self._forget_template_memory(template.dir)
            return None

    async def _cold_boot(self, vm_id: str, vm_dir: Path, image: Path, writable: Path) -> VirtualMachine:
        token = secrets.token_urlsafe(24)
        vm = await self._launch(vm_id, vm_dir, image=image, writable=writable, token=token)
        try:
            await self._wait_for_agent(vm, self.settings.cold_boot_timeout_s)
        except BaseException:
            await vm.stop(graceful=False)
            raise
        vm.boot_method = "cold"
        return vm

    async def _launch(
        self,
        vm_id: str,
        vm_dir: Path,
        *,
        image: Path,
        writable: Path,
        token: str,
        memory_fd: int | None = None,
        shared_memory: bool = False,
        incoming: bool = False,
    ) -> VirtualMachine:
        last_error = ""
        for _attempt in range(3):  # a slirp host port can be taken between probe and bind
            network: SandboxNetwork | None = None
            cgroup: VMCgroup | None = None
            placeholder: int | None = None
            files = PassedFiles()
            confinement = Confinement()
            try:
                if self.network.isolated:
                    network = await self.network.acquire()
                    # A free fd number for the tap, which the child opens inside the namespace.
                    placeholder = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
                    confinement = Confinement(netns=network.netns_path, tap="tap0", tap_fd=placeholder)
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
                command = QemuCommand(
                    kernel=files.path(self.assets.kernel),
                    initramfs=files.path(self.assets.initramfs),
                    os_disk=files.fdset(self.assets.os_disk, writable=False),
                    image_disk=files.fdset(image, writable=False),
                    writable_disk=files.fdset(writable, writable=True),
                    qmp_fd=files.listening_socket(vm_dir / "qmp.sock"),
                    netdev=netdev,
                    accel=self.accel,
                    memory_mib=self.settings.memory_mib,
                    vcpus=self.settings.vcpus,
                    kernel_args=kernel_args(token=token),
                    memory_file=MemoryFile(files.fd_path(memory_fd), shared=shared_memory) if memory_fd else None,
                    incoming=incoming,
                    tcg_tb_size_mib=self.settings.tcg_tb_size_mib,
                    seccomp=self.settings.jail,
                    fd_args=files.qemu_args(),
                )
                confinement.pass_fds = files.all_fds
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
                files.close(keep=(memory_fd,) if memory_fd else ())
            console = ConsoleLog(self.settings.serial_log_max_bytes)
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
                agent=AgentClient(agent_address[1], token, host=agent_address[0]), on_stopped=self._forget,
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
            except asyncio.TimeoutError:
                pass

    async def _wait_for_agent(self, vm: VirtualMachine, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not await vm.guard(vm.agent.ping(timeout=2.0)):
            if time.monotonic() > deadline:
                tail = vm.console.tail() if vm.console else ""
                raise errors.BootTimeout(f"agent not ready after {timeout:.0f}s; console tail:\n{tail}")
            await asyncio.sleep(0.02)

    def _init_payload(self, spec: VMSpec) -> dict:
        return {
            "token": secrets.token_urlsafe(32),
            "session_id": spec.session_id,
            "env": spec.env,
            "hostname": spec.hostname,
            "time_ns": time.time_ns(),
            "entropy": base64.b64encode(os.urandom(64)).decode(),
            "disks": {"image": IMAGE_DISK_SERIAL, "writable": WRITABLE_DISK_SERIAL},
            "user": spec.user,
            "workdir": spec.workdir,
        }

    def _forget(self, vm: VirtualMachine) -> None:
        self.vms.pop(vm.id, None)


async def _pass_fd(qmp: QMPClient, fd: int, name: str) -> None:
    """Hand QEMU an open file as `fd:name` (SCM_RIGHTS + getfd): a jailed QEMU
    may neither spawn `exec:` helpers nor open our files itself."""
    # Not QMPClient.send_fd_scm: it needs the stdlib socket under asyncio's
    # wrapper, which uvloop (the server's loop) does not have. The write
    # buffer is empty here: every command before this one was answered.
    transport_socket = qmp._writer.transport.get_extra_info("socket")  # noqa: SLF001
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(transport_socket.fileno())) as sock:
        sock.sendmsg([b" "], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
    await qmp.execute("getfd", {"fdname": name})


def _remove_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
