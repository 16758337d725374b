"""Runtime: starts microVMs from the template snapshot (or cold) and tracks them.

    runtime = Runtime(settings)
    vm = await runtime.start(VMSpec(image_disk=..., session_id="s-1"))
    result = await vm.exec("echo hi")
    await vm.stop()

The template snapshots and their sealed RAM are chaser/vm/template_store.py's, a
clone's restore and a cold boot chaser/vm/boot.py's, pause/resume/fork
chaser/vm/suspend.py's and adopting a dead server's VMs chaser/vm/adopt.py's; this
module launches the VMs for them and keeps the set of running ones.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from chaser import errors
from chaser.agent.protocol import IMAGE_DISK_SERIAL, WRITABLE_DISK_SERIAL
from chaser.config import Settings
from chaser.guest.build import GuestAssets, load_guest_assets
from chaser.runtime.egress import EgressPolicy
from chaser.runtime.interface import NetworkMode, SandboxVM
from chaser.runtime.spec import VMSpec
from chaser.vm import adopt as adoption
from chaser.vm import suspend
from chaser.vm.accel import resolve_accel
from chaser.vm.admission import Admission
from chaser.vm.boot import cold_boot, restore_clone
from chaser.vm.cgroup import detect as detect_cgroups
from chaser.vm.cgroup import reap_empty
from chaser.vm.disks import create_writable_disk, pad_to_slot
from chaser.vm.jail import jail_user_for
from chaser.vm.launcher import Launcher
from chaser.vm.machine import VirtualMachine
from chaser.vm.network.manager import NetworkManager
from chaser.vm.pool import WarmPool
from chaser.vm.process import reap_orphans
from chaser.vm.saved import SavedState
from chaser.vm.template import Template, qemu_version
from chaser.vm.template_store import TemplateStore

log = logging.getLogger(__name__)
# How long a started session's first command holds the warm pool's refill back (chaser/vm/pool.py).
FIRST_CALL_GRACE_S = 2.0


class Runtime:
    """The QEMU implementation of `chaser.runtime.Runtime` on this machine."""

    def __init__(self, settings: Settings, assets: GuestAssets | None = None, *, adoptable: bool = False) -> None:
        """`adoptable` (the server's): its VMs outlive this process for the next one to adopt
        (chaser/vm/adopt.py); else (tests, `chaser guest build`) they die with it."""
        self.settings = settings
        self.adoptable = adoptable
        self._assets = assets
        self._accel: str | None = None
        self.vms: dict[str, VirtualMachine] = {}
        self.pool: WarmPool[VirtualMachine] = WarmPool(
            self.boot, size=0, writable_size_bytes=settings.writable_size_bytes)  # sized by admission below
        settings.vms_dir.mkdir(parents=True, exist_ok=True)
        # VMs a dead server left running wait for their sessions (adopt); the rest are reaped now.
        self._adoptable, self._lost = adoption.scan(settings.vms_dir)
        self._reaped: list[tuple[int, str]] = []  # QEMUs killed here: prepare_host waits for their ends
        reaped = reap_orphans(settings.vms_dir, keep=frozenset(s.vm_id for s in self._adoptable.values()),
                              killed=self._reaped)
        if reaped:
            log.warning("reaped %d VMs left by a dead process", len(reaped))
        self.network = NetworkManager(settings)
        self.templates = TemplateStore(self)  # the template snapshots and their sealed RAM
        self.cgroups = detect_cgroups() if settings.jail else None
        self.launcher = Launcher(settings, network=self.network, cgroups=self.cgroups, outlive=adoptable)
        self.admission = Admission(settings)
        self.pool.size = self.admission.limits.warm_pool_size
        self._starting = 0  # start() calls between admission and a running VM
        log.info("admission limits: %s", self.admission.describe())
        reap_empty(self.cgroups)
        jailed = "jailed" if jail_user_for(settings, 0) else "not jailed (CHASER_JAIL=false or not root)"
        log.info("network: %s (%s); cgroups: %s; QEMU: %s", self.network.mode, self.network.reason,
                 self.cgroups or "none", jailed)
        if self.network.mode == "slirp":
            log.warning("CHASER_NETWORK=slirp: sandboxes can reach this host's loopback services (development only)")
        elif self.network.mode == "none":
            log.warning("sandboxes get no network beyond the agent channel: %s", self.network.reason)

    # --- configuration resolved on first use ---
    @property
    def assets(self) -> GuestAssets:
        if self._assets is None:
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
        return self.templates.dir

    def template_dir(self) -> Path:
        return self.templates.current_dir()

    @property
    def network_mode(self) -> NetworkMode:
        return self.network.mode  # type: ignore[return-value]  # resolve_mode answers one of NetworkMode

    @property
    def base_image_disk(self) -> Path:
        return Path(self.assets.base_rootfs)

    # --- public API ---
    async def prepare_host(self) -> None:
        """Host set-up before the first VM: the host nftables table, and the
        namespaces a killed server left behind are removed (QEMUs and VM
        directories were reaped in __init__); the accelerator (a KVM probe may
        boot a guest) and QEMU's version are resolved off the event loop."""
        reaped, self._reaped = self._reaped, []
        await asyncio.gather(*(adoption.wait_dead(pid, start) for pid, start in reaped))  # their slots free
        await self.network.start()
        await asyncio.to_thread(lambda: (self.accel, qemu_version()))

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
            with self.pool.starting():
                async with self._start_slot(spec):
                    return await self._start(spec)
        finally:
            self._starting -= 1

    def _start_slot(self, spec: VMSpec) -> contextlib.AbstractAsyncContextManager[Any]:
        """A start that restores or boots waits for a slot (chaser/vm/admission.py, start queue);
        a warm pool claim is a few agent calls and never waits behind restores."""
        if self.pool.eligible(spec) and self.pool.ready:
            return contextlib.nullcontext()
        return self.admission.start_slot

    async def _start(self, spec: VMSpec) -> VirtualMachine:
        started = time.monotonic()
        if self._accel is None:  # a KVM probe may boot a guest: never on the event loop
            await asyncio.to_thread(lambda: self.accel)
        if self.pool.image is None and self.pool.eligible_shape(spec):
            self.pool.start(spec.image_disk)  # the first plain request names the default image
        vm = self.pool.take(spec)
        if vm is None:
            vm = await self.boot(spec)
        else:
            vm.boot_method = "pool"  # restored from the template earlier, claimed now
        try:
            init = self._init_payload(spec)
            policy = spec.network or EgressPolicy(internet=self.settings.network_internet_default)
            await asyncio.gather(vm.init(init), vm.apply_network(policy))
            vm.agent.set_token(init["token"])  # the boot token is dead from here on
            vm.session_id = spec.session_id
            if self.adoptable:
                await asyncio.to_thread(adoption.save_state, vm)  # a later server can adopt it
        except BaseException:
            await vm.stop(graceful=False)
            raise
        vm.boot_ms = (time.monotonic() - started) * 1000
        vm.call_finished.clear()
        self.pool.hold_until(vm.call_finished.wait(), FIRST_CALL_GRACE_S)
        return vm

    async def save(self, vm: SandboxVM, directory: Path, *, keep_running: bool) -> Path:
        """Save the VM's memory, devices and disk under `directory` (chaser/vm/suspend.py):
        it ends after (pause) or goes on (fork). Failures leave it running."""
        assert isinstance(vm, VirtualMachine)
        await suspend.save(self, vm, directory, keep_running=keep_running)
        return SavedState(directory).disk_file

    async def resume(self, spec: VMSpec, directory: Path, *, hostname: str | None = None,
                     consume: bool = False) -> VirtualMachine:
        """A VM running from the state saved in `directory`, on `spec.writable_disk`."""
        self.check_capacity()
        self._starting += 1
        try:
            started = time.monotonic()
            async with self.admission.start_slot:
                vm = await suspend.resume(self, spec, directory, hostname=hostname, consume=consume)
            try:
                if self.adoptable:
                    await asyncio.to_thread(adoption.save_state, vm)  # its new token
            except BaseException:
                await vm.stop(graceful=False)
                raise
            vm.boot_ms = (time.monotonic() - started) * 1000
            return vm
        finally:
            self._starting -= 1

    def check_saved(self, directory: Path) -> None:
        """409 snapshot_incompatible unless `directory` holds a state this runtime can resume."""
        suspend.check_compatible(self, SavedState(directory))

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
                vm = await restore_clone(self, vm_id, vm_dir, template, spec.image_disk, writable)
                if vm is None and spec.boot == "template":
                    raise errors.BootTimeout("restoring the template snapshot failed")
            if vm is None:
                writable = await self._prepare_writable(spec, vm_dir)  # a failed restore removed the VM dir
                vm = await cold_boot(self, vm_id, vm_dir, spec.image_disk, writable)
        except BaseException:
            if vm is not None:
                await vm.stop(graceful=False)
            else:
                await asyncio.to_thread(shutil.rmtree, vm_dir, ignore_errors=True)
            raise
        vm.writable_disk = writable
        vm.disk_quota_bytes = spec.writable_size_bytes or self.settings.writable_size_bytes
        vm.image_disk = spec.image_disk
        vm.ram_block = "builtin" if vm.boot_method == "cold" else "mem"
        self.vms[vm_id] = vm
        return vm

    async def stop_all(self, *, graceful: bool = False) -> None:
        await self.pool.close()
        await asyncio.gather(*(vm.stop(graceful=graceful) for vm in list(self.vms.values())), return_exceptions=True)
        await self.network.close()

    # --- restarts that keep VMs (chaser/vm/adopt.py) ---
    async def adopt(self, session_id: str, *, network: EgressPolicy | None) -> VirtualMachine | None:
        """The running VM an earlier server left for `session_id`; None when there is none;
        `errors.VMCrashed` when there was one and it is lost (nothing of it is left)."""
        state = self._adoptable.pop(session_id, None)
        if state is None:
            if session_id in self._lost:
                raise errors.VMCrashed(self._lost.pop(session_id))
            return None
        policy = network or EgressPolicy(internet=self.settings.network_internet_default)
        try:
            vm = await adoption.adopt(self, state, policy)
        except Exception as exc:  # any failure: the VM is lost (adopt discarded it)
            raise errors.VMCrashed(f"its VM could not be adopted: {type(exc).__name__}: {exc}") from exc
        self.vms[vm.id] = vm
        return vm

    async def finish_adoption(self) -> None:
        """Discard the VMs left running that no session adopted."""
        states, self._adoptable, self._lost = list(self._adoptable.values()), {}, {}
        await asyncio.gather(*(adoption.discard(self, state) for state in states), return_exceptions=True)

    async def detach_all(self) -> None:
        """The server exits and its sessions' VMs run on for the next one to adopt; the warm pool's stop."""
        await self.pool.close()
        vms = list(self.vms.values())
        await asyncio.gather(*(vm.detach() if vm.session_id else vm.stop(graceful=False) for vm in vms),
                             return_exceptions=True)
        await self.network.close()

    async def ensure_template(self) -> Template:
        """Load the template for the current inputs, building it if missing (chaser/vm/template_store.py)."""
        return await self.templates.ensure()

    async def template_memory(self) -> tuple[Template, int]:
        """The current template and its RAM as a sealed memfd (built if missing)."""
        template = await self.templates.ensure()
        return template, await self.templates.memory(template)

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

    async def wait_loaded(self, vm: VirtualMachine) -> None:
        """Until an `-incoming` VM has loaded its state (QEMU exits if it cannot: VMCrashed)."""
        deadline = time.monotonic() + self.settings.restore_timeout_s
        while True:
            answer = await vm.guard(vm.qmp.execute("query-status"))
            if isinstance(answer, dict) and answer.get("status") == "paused":
                return
            if time.monotonic() > deadline:
                raise errors.BootTimeout("the saved state did not load in time")
            await asyncio.sleep(0.01)

    async def launch_vm(self, vm_id: str, vm_dir: Path, **kwargs: Any) -> VirtualMachine:
        return await self.launcher.launch(vm_id, vm_dir, assets=self.assets, accel=self.accel,
                                          on_stopped=self.forget, **kwargs)

    async def wait_for_agent(self, vm: VirtualMachine, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not await vm.guard(vm.agent.ping(timeout=2.0)):
            if time.monotonic() > deadline:
                tail = vm.console.tail() if vm.console else ""
                raise errors.BootTimeout(f"agent not ready after {timeout:.0f}s; console tail:\n{tail}")
            await asyncio.sleep(0.02)

    def _init_payload(self, spec: VMSpec) -> dict[str, Any]:
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

    def forget(self, vm: VirtualMachine) -> None:
        self.vms.pop(vm.id, None)

