"""Warm pool: VMs restored from the template with the default image, their
sandbox already mounted and a first process already run. An ephemeral session
of that image then costs one `/init` call instead of a restore + mount."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from chaser.agent.protocol import IMAGE_DISK_SERIAL, WRITABLE_DISK_SERIAL
from chaser.runtime.spec import VMSpec

log = logging.getLogger(__name__)
RETRY_AFTER_FAILURE_S = 30.0
# cgroup CPU weights (v2 units): a VM being made ready for the pool yields the CPU to running sessions.
BACKGROUND_CPU_WEIGHT = 10
SESSION_CPU_WEIGHT = 100
DISKS = {"image": IMAGE_DISK_SERIAL, "writable": WRITABLE_DISK_SERIAL}


class PoolableVM(Protocol):
    """What the pool needs of a VM (chaser/vm/machine.py's VirtualMachine)."""

    pooled: bool

    @property
    def alive(self) -> bool: ...
    async def wait_exit(self, timeout: float | None = None) -> bool: ...
    async def prepare(self, disks: dict[str, str]) -> dict[str, Any]: ...
    def set_cpu_weight(self, weight: int) -> None: ...
    async def stop(self, *, graceful: bool = True) -> None: ...


VM = TypeVar("VM", bound=PoolableVM)


class WarmPool(Generic[VM]):
    """`boot` makes a running VM (the runtime's restore path); the pool owns the
    VMs it holds until `take` hands one out."""

    def __init__(self, boot: Callable[[VMSpec], Awaitable[VM]], *, size: int, writable_size_bytes: int,
                 retry_after_s: float = RETRY_AFTER_FAILURE_S) -> None:
        self._boot = boot
        self.size = size
        self.writable_size_bytes = writable_size_bytes
        self.retry_after_s = retry_after_s
        self.image: Path | None = None
        self.ready: list[VM] = []
        self._filler: asyncio.Task[None] | None = None
        self._closed = False
        self._stopping: set[asyncio.Future[None]] = set()
        self._watchers: dict[int, asyncio.Task[None]] = {}  # id(vm) → the task that notices its death
        self._starts = 0  # session starts in flight (`starting`, `hold_until`)
        self._quiet = asyncio.Event()  # set while there are none: the filler boots only then
        self._quiet.set()
        self._holds: set[asyncio.Task[None]] = set()

    def start(self, image: Path) -> None:
        """Keep `size` VMs of `image` ready (the image sessions use by default)."""
        if self.image != image:
            self.image = image
            self._discard_ready()
        self.refill()

    def eligible_shape(self, spec: VMSpec) -> bool:
        """A plain ephemeral spec: nothing a pooled VM could not take over."""
        return (
            self.size > 0
            and spec.boot == "auto"
            and spec.writable_disk is None
            and spec.writable_size_bytes in (None, self.writable_size_bytes)
            and spec.user is None
            and spec.workdir is None
        )

    def eligible(self, spec: VMSpec) -> bool:
        return self.eligible_shape(spec) and self.image is not None and spec.image_disk == self.image

    def take(self, spec: VMSpec) -> VM | None:
        if not self.eligible(spec):
            return None
        vm: VM | None = None
        while self.ready and vm is None:
            candidate = self.ready.pop(0)
            self._unwatch(candidate)
            if candidate.alive:
                vm = candidate
                vm.set_cpu_weight(SESSION_CPU_WEIGHT)
            else:
                self._stop_later(candidate)
        self.refill()
        return vm

    @contextmanager
    def starting(self) -> Iterator[None]:
        """Around a session's start: the pool boots nothing meanwhile and refills after the last
        one. A refill's restore would take the CPU that the claimed VM's `/init` and first
        command need (docs/architecture.md, "Warm pool")."""
        self._hold()
        try:
            yield
        finally:
            self._release()

    def hold_until(self, done: Awaitable[Any], timeout_s: float) -> None:
        """Keep the filler paused, as `starting` does, until `done` or `timeout_s` (a session's first
        command, which a caller sends right after the create, is the other half of its start)."""
        self._hold()

        async def release() -> None:
            try:
                await asyncio.wait_for(done, timeout_s)
            except Exception:  # noqa: BLE001 - a timeout or whatever happened: the hold ends
                pass
            finally:
                self._release()

        task = asyncio.ensure_future(release())
        self._holds.add(task)
        task.add_done_callback(self._holds.discard)

    def _hold(self) -> None:
        self._starts += 1
        self._quiet.clear()

    def _release(self) -> None:
        self._starts -= 1
        if self._starts == 0:
            self._quiet.set()
            self.refill()

    def _watch(self, vm: VM) -> None:
        """A pooled VM that dies (killed from outside, its memory limit) leaves the pool at once
        and is replaced then, not found dead by the next create."""
        async def watch() -> None:
            await vm.wait_exit()
            if vm in self.ready:
                self.ready.remove(vm)
                log.warning("warm pool: a ready VM died; replacing it")
                self._stop_later(vm)  # its namespace, cgroup and directory
                self.refill()
            self._watchers.pop(id(vm), None)

        self._watchers[id(vm)] = asyncio.ensure_future(watch())

    def _unwatch(self, vm: VM) -> None:
        task = self._watchers.pop(id(vm), None)
        if task is not None:
            task.cancel()

    def refill(self) -> None:
        if self.size <= 0 or self.image is None or self._closed:
            return
        if self._filler is None or self._filler.done():
            self._filler = asyncio.ensure_future(self._fill())

    async def _fill(self) -> None:
        while len(self.ready) < self.size and not self._closed:
            await self._quiet.wait()
            image = self.image
            if image is None:
                return
            try:
                vm = await self._boot(VMSpec(image_disk=image))
            except Exception as exc:  # noqa: BLE001 - the pool is an optimisation: log and retry later
                log.warning("warm pool: boot failed (%s); retrying in %.0fs", exc, self.retry_after_s)
                await asyncio.sleep(self.retry_after_s)
                continue
            vm.set_cpu_weight(BACKGROUND_CPU_WEIGHT)
            try:
                await vm.prepare(DISKS)
            except BaseException as exc:
                await vm.stop(graceful=False)
                if not isinstance(exc, Exception):
                    raise
                log.warning("warm pool: prepare failed (%s)", exc)
                await asyncio.sleep(self.retry_after_s)
                continue
            if image != self.image or self._closed:
                await vm.stop(graceful=False)
                continue
            vm.pooled = True
            self.ready.append(vm)
            self._watch(vm)
            log.info("warm pool: %d of %d ready", len(self.ready), self.size)

    def _discard_ready(self) -> None:
        for vm in self.ready:
            self._unwatch(vm)
            self._stop_later(vm)
        self.ready.clear()

    def _stop_later(self, vm: VM) -> None:
        """Stop `vm` in the background; the task is kept until it ends (the loop holds only weak references)."""
        task = asyncio.ensure_future(vm.stop(graceful=False))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._holds):
            task.cancel()
        if self._filler is not None:
            self._filler.cancel()
            await asyncio.gather(self._filler, return_exceptions=True)
        ready, self.ready = self.ready, []
        for vm in ready:
            self._unwatch(vm)
        await asyncio.gather(*(vm.stop(graceful=False) for vm in ready), return_exceptions=True)
