"""Pause, resume and fork of running VMs (the Runtime's `save` and `resume`).

Save: QMP `stop`, the migration stream to a file (RAM and device state), the
writable disk kept or copied, meta last; then QEMU ends (pause) or `cont`s
(fork). Resume: a new QEMU in a new network namespace with a new boot token,
`-incoming` from the file, `cont`, then the agent's `/resume` sets the clock,
reseeds the RNG and takes a new session token (docs/pause-and-fork.md).
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chaser import errors
from chaser.agent.protocol import AGENT_PROTOCOL_VERSION
from chaser.diskcopy import copy_disk
from chaser.runtime.egress import EgressPolicy
from chaser.runtime.spec import VMSpec
from chaser.vm import saved
from chaser.vm.launcher import pass_fd
from chaser.vm.machine import VirtualMachine
from chaser.vm.saved import IGNORE_SHARED, SavedState
from chaser.vm.template import qemu_version

if TYPE_CHECKING:
    from chaser.vm.runtime import Runtime


def compat(runtime: Runtime) -> dict[str, Any]:
    """What a saved state is bound to: a resume under anything else is refused."""
    return {
        "format": saved.STATE_FORMAT,
        "guest": runtime.assets.fingerprint,
        "agent_protocol": AGENT_PROTOCOL_VERSION,
        "qemu": qemu_version(),
        "memory_mib": runtime.settings.memory_mib,
        "vcpus": runtime.settings.vcpus,
        "accel": runtime.accel,
        "network": runtime.network.backend,
        "slots": [runtime.settings.image_slot_bytes, runtime.settings.writable_slot_bytes],
    }


def check_compatible(runtime: Runtime, state: SavedState) -> dict[str, Any]:
    if not state.complete:
        raise errors.SnapshotIncompatible("there is no complete saved state to resume from")
    meta = state.meta()
    made, now = meta.get("compat") or {}, compat(runtime)
    differ = sorted(key for key in now if made.get(key) != now[key])
    if differ:
        raise errors.SnapshotIncompatible(
            f"the saved state was made by another {', '.join(differ)} than this server runs "
            "(a guest or QEMU upgrade): it cannot be resumed. Terminate the session; a workspace "
            "then starts fresh on its disk (what was not yet written to the disk is lost)")
    if not Path(str(meta.get("image_disk", ""))).exists():
        raise errors.SnapshotIncompatible("the image the saved state was made with is no longer on this host")
    return meta


async def save(runtime: Runtime, vm: VirtualMachine, directory: Path, *, keep_running: bool) -> SavedState:
    """The VM's state into `directory`. keep_running=False: QEMU ends after (pause);
    True: the VM goes on and the disk is copied (fork). On any failure the VM keeps
    running and nothing is left in `directory`."""
    state = SavedState(directory)
    writable = vm.writable_disk
    assert writable is not None, "a session VM has a writable disk"
    own_disk = writable.parent == vm.dir  # ephemeral: it would go with the VM directory
    copy_bytes = os.stat(writable).st_blocks * 512 if keep_running else 0
    await asyncio.to_thread(saved.check_room, directory, runtime.settings.memory_mib * 1024 * 1024 + copy_bytes)
    started = time.monotonic()
    qmp = vm.qmp
    await vm.guard(qmp.execute("migrate-set-capabilities", IGNORE_SHARED))
    await vm.guard(qmp.execute("stop"))
    try:
        await vm.guard(saved.migrate_to_file(qmp, state.memory_file))
        stream_s = time.monotonic() - started
        if keep_running or own_disk:
            keep = copy_disk if keep_running else saved.link_or_copy
            await asyncio.to_thread(keep, writable, state.disk_file)
        meta = {
            "compat": compat(runtime),
            "created_at": time.time(),
            "image_disk": str(vm.image_disk),
            "ram": vm.ram_backing,
            "disk_in_state": keep_running or own_disk,
            "stream_s": round(stream_s, 3),
        }
        await asyncio.to_thread(saved.write_meta, state, meta)
    except BaseException:
        await asyncio.to_thread(saved.discard, directory)
        if vm.alive:
            try:
                await qmp.execute("cont")
            except Exception:  # noqa: BLE001 - the VM is going anyway
                pass
        raise
    if keep_running:
        await vm.guard(qmp.execute("cont"))
    else:
        await vm.stop(graceful=False)  # its state is saved: nothing more to flush
    return state


async def resume(runtime: Runtime, spec: VMSpec, directory: Path, *, hostname: str | None = None) -> VirtualMachine:
    """A running VM from the saved state in `directory` on `spec.writable_disk`,
    with a new token, clock and entropy (and `hostname`, for a fork)."""
    state = SavedState(directory)
    meta = await asyncio.to_thread(check_compatible, runtime, state)
    writable = spec.writable_disk
    if writable is None or not writable.exists():
        raise errors.SnapshotIncompatible("the saved state's disk is missing")
    memory_fd = None
    if meta.get("ram") == "template":
        memory_fd = await runtime.sealed_template_memory()
    vm_id = f"vm-{secrets.token_hex(6)}"
    vm_dir = runtime.settings.vms_dir / vm_id
    vm_dir.mkdir(parents=True)
    vm = await runtime.launch_vm(vm_id, vm_dir, image=Path(meta["image_disk"]), writable=writable,
                                 memory_fd=memory_fd, shared_memory=False, incoming=True)
    try:
        qmp = vm.qmp
        await vm.guard(qmp.execute("migrate-set-capabilities", IGNORE_SHARED))
        with open(state.memory_file, "rb") as stream:  # noqa: ASYNC230 - opened to pass its descriptor
            await pass_fd(qmp, stream.fileno(), "saved-state")
        await vm.guard(qmp.execute("migrate-incoming", {"uri": "fd:saved-state"}))
        await runtime.wait_loaded(vm)
        await vm.guard(qmp.execute("cont"))
        await runtime.wait_for_agent(vm, runtime.settings.restore_timeout_s)
        token = secrets.token_urlsafe(32)
        payload: dict[str, Any] = {
            "token": token, "time_ns": time.time_ns(), "session_id": spec.session_id,
            "entropy": base64.b64encode(os.urandom(64)).decode(),
        }
        if hostname:
            payload["hostname"] = hostname
        policy = spec.network or EgressPolicy(internet=runtime.settings.network_internet_default)
        await asyncio.gather(vm.guard(vm.agent.resume(payload)), vm.apply_network(policy))
        vm.agent.set_token(token)  # the boot token is dead from here on
    except BaseException:
        await vm.stop(graceful=False)
        raise
    vm.boot_method = "resume"
    vm.session_id = spec.session_id
    vm.image_disk = Path(meta["image_disk"])
    vm.ram_backing = "template" if memory_fd is not None else "anonymous"
    vm.writable_disk = writable
    vm.disk_quota_bytes = spec.writable_size_bytes or runtime.settings.writable_size_bytes
    runtime.vms[vm_id] = vm
    return vm
