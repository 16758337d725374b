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
import logging
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
from chaser.vm.qemu import MACHINE
from chaser.vm.saved import IGNORE_SHARED, SavedState
from chaser.vm.stream_filter import filter_stream
from chaser.vm.template import Template, hold, load_template, qemu_version

if TYPE_CHECKING:
    from chaser.vm.runtime import Runtime

log = logging.getLogger(__name__)


def compat(runtime: Runtime) -> dict[str, Any]:
    """What a saved state is bound to: a resume under anything else is refused."""
    return {
        "format": saved.STATE_FORMAT,
        "guest": runtime.assets.fingerprint,
        "agent_protocol": AGENT_PROTOCOL_VERSION,
        "qemu": qemu_version(),
        "machine": MACHINE,
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
    template = await template_for_save(runtime, vm)  # refused here, before anything stops
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
        await vm.guard(saved.migrate_to_file(qmp, state.whole_stream))
        stopped_s = time.monotonic() - started
        if keep_running or own_disk:
            keep = copy_disk if keep_running else saved.link_or_copy
            await asyncio.to_thread(keep, writable, state.disk_file)
    except BaseException:
        await asyncio.to_thread(saved.discard, directory)
        if vm.alive:
            try:
                await qmp.execute("cont")
            except Exception:  # noqa: BLE001 - the VM is going anyway
                pass
        raise
    # Stream and disk are saved: the VM goes on (fork) or ends (pause) before the rewrite.
    try:
        if keep_running:
            await vm.guard(qmp.execute("cont"))
        else:
            await vm.stop(graceful=False)  # its state is saved: nothing more to flush
        meta = {
            "compat": compat(runtime),
            "created_at": time.time(),
            "image_disk": str(vm.image_disk),
            "ram_block": vm.ram_block,
            "disk_in_state": keep_running or own_disk,
            "stopped_s": round(stopped_s, 3),
            **await _keep_what_differs(runtime, vm, state, template),
        }
        await asyncio.to_thread(saved.write_meta, state, meta)
    except BaseException:
        await asyncio.to_thread(saved.discard, directory)
        raise
    return state


async def template_for_save(runtime: Runtime, vm: VirtualMachine) -> Template | None:
    """The template a save of `vm` filters its stream against: the one its RAM maps while its
    files are still the same (else the current one: dropping a page that equals a template's
    is right whatever backs the VM's RAM, as long as the resume maps that template). None for
    a cold-booted VM's RAM block. 409 for a VM started from the template of other settings
    (an adopted VM after a restart with changed settings): its state would be bound to what
    this server runs, not to what made it."""
    if vm.ram_block != "mem":
        return None
    current = runtime.template_dir()
    own = vm.template
    if own is not None and own.key != current.name:
        raise errors.SnapshotIncompatible(
            f"this VM was started from the template {own.key}, made for other settings (guest, memory, "
            f"vCPUs, accelerator, slots or network) than this server runs (template {current.name}): a "
            "state saved from it could not be resumed here. Nothing was changed; the session keeps running")
    if own is None and vm.boot_method in ("template", "pool"):  # adopted from an older server's adopt.json
        await _check_memory_size(runtime, vm)
    if own is not None:
        on_disk = await asyncio.to_thread(load_template, own.dir)
        if on_disk is not None and on_disk.created_at == own.created_at:
            return own
    return await runtime.ensure_template()


async def _check_memory_size(runtime: Runtime, vm: VirtualMachine) -> None:
    """Of a VM that does not name its template: its RAM must be this server's size."""
    answer = await vm.guard(vm.qmp.execute("query-memory-size-summary"))
    size = answer.get("base-memory") if isinstance(answer, dict) else None
    if isinstance(size, int) and size != runtime.settings.memory_mib * 1024 * 1024:
        raise errors.SnapshotIncompatible(
            f"this VM has {size >> 20} MiB of RAM and this server runs {runtime.settings.memory_mib} MiB "
            "guests (it was started before a settings change): a state saved from it could not be "
            "resumed here. Nothing was changed; the session keeps running")


async def _keep_what_differs(runtime: Runtime, vm: VirtualMachine, state: SavedState,
                             template: Template | None) -> dict[str, Any]:
    """The stream without the pages `template` has (chaser/vm/stream_filter.py), when the VM's RAM
    block is a template's (a cold-booted VM's is not); else the whole stream. A resume maps the
    same template under it; the saved state holds that template (chaser/vm/template.py `hold`).
    What the meta file says about it."""
    whole = state.whole_stream
    if template is not None:
        memory_fd = await runtime.templates.memory(template)
        started = time.monotonic()
        size = runtime.settings.memory_mib * 1024 * 1024
        try:
            stats = await asyncio.to_thread(filter_stream, whole, state.partial_stream, memory_fd, size)
        except OSError as exc:  # e.g. the disk filled up: the whole stream is as good, only bigger
            log.warning("VM %s: rewriting the migration stream failed (%s); kept whole", vm.id, exc)
            await asyncio.to_thread(state.partial_stream.unlink, missing_ok=True)
            stats = None
        if stats is not None:
            await asyncio.to_thread(os.replace, state.partial_stream, state.memory_file)
            await asyncio.to_thread(whole.unlink)
            await asyncio.to_thread(hold, template, state.dir)
            return {"filtered": True, "template": template.key, "template_created_at": template.created_at,
                    "filter_s": round(time.monotonic() - started, 3),
                    "pages_kept": stats.pages + stats.zero_pages - stats.dropped, "pages_dropped": stats.dropped}
        else:
            log.warning("VM %s: the migration stream was not rewritten; kept whole", vm.id)
    await asyncio.to_thread(os.replace, whole, state.memory_file)
    return {"filtered": False}


async def _template_of_state(runtime: Runtime, meta: dict[str, Any]) -> Template:
    """The template a filtered state was saved against (its meta names it; an older state's is
    the current one), with the same creation time: else the dropped pages are not there."""
    key = meta.get("template")
    if isinstance(key, str) and key:
        template = await asyncio.to_thread(load_template, runtime.templates_dir / key)
    else:
        template = await runtime.ensure_template()
    if template is None or template.created_at != meta.get("template_created_at"):
        raise errors.SnapshotIncompatible(
            "the template snapshot this state was saved against was rebuilt or removed: it cannot be resumed")
    return template


async def resume(runtime: Runtime, spec: VMSpec, directory: Path, *, hostname: str | None = None,
                 consume: bool = False) -> VirtualMachine:
    """A running VM from the saved state in `directory` on `spec.writable_disk`,
    with a new token, clock and entropy (and `hostname`, for a fork). `consume`: the
    state's meta file goes once it is loaded, before the VM runs again, so a state
    whose VM has since written to its disk is never resumed a second time."""
    state = SavedState(directory)
    meta = await asyncio.to_thread(check_compatible, runtime, state)
    writable = spec.writable_disk
    if writable is None or not writable.exists():
        raise errors.SnapshotIncompatible("the saved state's disk is missing")
    # A filtered stream lacks the pages the template has: the RAM must be the same template's.
    # A whole one loads into anonymous RAM under the same block id (zero pages stay untouched).
    memory_fd, template = None, None
    if meta.get("filtered"):
        template = await _template_of_state(runtime, meta)
        memory_fd = await runtime.templates.memory(template)
    vm_id = f"vm-{secrets.token_hex(6)}"
    vm_dir = runtime.settings.vms_dir / vm_id
    vm_dir.mkdir(parents=True)
    vm = await runtime.launch_vm(vm_id, vm_dir, image=Path(meta["image_disk"]), writable=writable,
                                 memory_fd=memory_fd,
                                 anonymous_memory=memory_fd is None and meta.get("ram_block") == "mem",
                                 incoming=True)
    try:
        qmp = vm.qmp
        await vm.guard(qmp.execute("migrate-set-capabilities", IGNORE_SHARED))
        with open(state.memory_file, "rb") as stream:  # noqa: ASYNC230 - opened to pass its descriptor
            await pass_fd(qmp, stream.fileno(), "saved-state")
        await vm.guard(qmp.execute("migrate-incoming", {"uri": "fd:saved-state"}))
        await runtime.wait_loaded(vm)
        if consume:
            await asyncio.to_thread(state.meta_file.unlink, missing_ok=True)
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
    vm.ram_block = str(meta.get("ram_block", "builtin"))
    vm.template = template
    if template is not None:
        await asyncio.to_thread(hold, template, vm_dir)
    vm.writable_disk = writable
    vm.disk_quota_bytes = spec.writable_size_bytes or runtime.settings.writable_size_bytes
    runtime.vms[vm_id] = vm
    return vm
