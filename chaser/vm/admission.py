"""Admission control: may the host start one more VM right now?

`Admission(settings)` derives its `limits` once, at construction, and
`check(running_sessions=..., starting=...)` answers each start: it returns, or
raises `errors.CapacityExhausted` (503 `capacity_exhausted`, with `Retry-After`)
naming the limit that was hit. Nothing here starts or allocates anything; the
host reads (`/proc/meminfo`, `os.statvfs` of the data directory) are a few
microseconds, fine on the event loop.

What one VM costs
    memory: `memory_mib + vm_memory_overhead_mib` MiB. The guest RAM of a restored
    clone is a private copy-on-write mapping of the template's RAM file: pages the
    guest only reads stay shared page cache, but every page it writes becomes
    anonymous memory of that QEMU, so a busy guest can grow to its whole RAM. The
    overhead is QEMU itself (devices, the TCG code cache, …). The sum is the worst
    case, and it is what the check charges.
    disk: writable disks are sparse files; each grows as its guest writes, up to
    `writable_size_bytes` (the ext4 inside is that size). The check charges a new
    VM that whole quota (at least `VM_START_DISK_MIB`) on top of what the running
    VMs' disks may still grow, and refuses when the data directory's file system
    would then have less free than the reserve.

The limits (each `CHASER_*` setting; unset = derived from the host here)
    memory reserve (`CHASER_HOST_MEMORY_RESERVE_MIB`): host memory never handed
        to VMs. Default max(1024 MiB, 10 % of MemTotal).
    disk reserve (`CHASER_HOST_DISK_RESERVE_MIB`): free space kept on the file
        system of `CHASER_HOME`. Default max(2048 MiB, 5 % of that file system's size).
    session limit (`CHASER_MAX_SESSIONS`): VMs at once, counting those being
        started. Default: how many worst-case VMs fit in MemTotal minus the memory
        reserve, at least 1 — so even if every VM grows to its worst case, the
        reserve is left to the host.

    start queue (`CHASER_MAX_CONCURRENT_STARTS`): VM starts that run at once;
        the others wait in `start_slot` (after `check` has admitted them, so a
        waiting start counts as starting). Default: the number of CPUs. Under TCG
        a restore is CPU work: 20 at once on 2 cores all finished together after
        ~18 s; two at a time, half were ready after 7.8 s and all after 13.5 s
        (docs/performance.md).

    warm pool (`CHASER_WARM_POOL_SIZE`): VMs kept ready (chaser/vm/pool.py).
        Default: the number of CPUs (a burst beyond the pool queues in the start
        queue anyway), but no more worst-case VMs than fit in a tenth of MemTotal
        minus the memory reserve, and at least 1.

The check, in order (the first that fails answers)
    1. running + starting >= the session limit;
    2. MemAvailable minus the worst case of each VM still starting (its memory is
       not in use yet) is less than one VM's worst case plus the memory reserve;
    3. the free space of the data directory's file system, minus what the running
       VMs' disks may still grow, is less than the new VM's quota plus the disk reserve.
    A host read that fails refuses the start (fail closed) with the error in the message.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chaser import errors
from chaser.config import Settings

MIB = 1024 * 1024
MIN_MEMORY_RESERVE_MIB = 1024
MEMORY_RESERVE_FRACTION = 0.10
MIN_DISK_RESERVE_MIB = 2048
DISK_RESERVE_FRACTION = 0.05
# The share of the memory VMs may have that the warm pool's default size may hold at their worst case.
POOL_MEMORY_FRACTION = 0.10
# What a start writes to the data directory at once (a fresh writable disk's ext4 metadata, logs).
VM_START_DISK_MIB = 64
# Retry-After (seconds) per refusal: a session slot frees when one ends; memory and disk take longer.
RETRY_SESSIONS_S = 10
RETRY_MEMORY_S = 30
RETRY_DISK_S = 60


@dataclass(frozen=True)
class HostMemory:
    total_mib: int
    available_mib: int


@dataclass(frozen=True)
class DiskSpace:
    total_mib: int
    free_mib: int  # available to unprivileged users (f_bavail)


def read_meminfo(path: str = "/proc/meminfo") -> HostMemory:
    """MemTotal and MemAvailable of /proc/meminfo, in MiB."""
    values: dict[str, int] = {}
    with open(path, encoding="ascii") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name in ("MemTotal", "MemAvailable"):
                values[name] = int(rest.split()[0])  # kB
    if "MemTotal" not in values or "MemAvailable" not in values:
        raise ValueError(f"{path} has no MemTotal/MemAvailable")
    return HostMemory(total_mib=values["MemTotal"] // 1024, available_mib=values["MemAvailable"] // 1024)


def existing_ancestor(path: Path) -> Path:
    """`path`, or its nearest parent that exists (the data directory may not exist yet)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def read_disk(path: Path) -> DiskSpace:
    """Size and free space of the file system holding `path`, in MiB."""
    st = os.statvfs(existing_ancestor(path))
    return DiskSpace(total_mib=st.f_blocks * st.f_frsize // MIB, free_mib=st.f_bavail * st.f_frsize // MIB)


@dataclass(frozen=True)
class Limits:
    max_sessions: int
    memory_reserve_mib: int
    disk_reserve_mib: int
    vm_memory_mib: int  # worst case per VM: guest RAM + overhead
    vm_start_disk_mib: int
    writable_size_mib: int  # what each writable disk can grow to
    host_memory_total_mib: int
    disk_total_mib: int
    concurrent_starts: int
    warm_pool_size: int
    derived: tuple[str, ...]  # which of max_sessions, memory_reserve_mib, disk_reserve_mib came from the host


class Admission:
    """Limits derived once from the settings and the host; `check()` before each VM start.

    `meminfo` and `disk` read the host (injectable for tests): `meminfo()` →
    `HostMemory`, `disk(path)` → `DiskSpace`."""

    def __init__(self, settings: Settings, *, meminfo: Callable[[], HostMemory] = read_meminfo,
                 disk: Callable[[Path], DiskSpace] = read_disk) -> None:
        self.settings = settings
        self.data_dir = Path(settings.home)
        self._meminfo = meminfo
        self._disk = disk
        self.limits = self._derive()
        self.start_slot = asyncio.Semaphore(self.limits.concurrent_starts)  # `async with` around a start

    def _derive(self) -> Limits:
        s = self.settings
        if s.max_concurrent_starts is not None and s.max_concurrent_starts < 1:
            raise ValueError(f"CHASER_MAX_CONCURRENT_STARTS must be at least 1 (got {s.max_concurrent_starts})")
        for name in ("max_sessions", "host_memory_reserve_mib", "host_disk_reserve_mib", "warm_pool_size"):
            value = getattr(s, name)
            if value is not None and value < 0:
                raise ValueError(f"CHASER_{name.upper()} must not be negative (got {value})")
        memory = self._meminfo()
        disk = self._disk(self.data_dir)
        derived = []
        vm_memory = s.memory_mib + s.vm_memory_overhead_mib
        memory_reserve = s.host_memory_reserve_mib
        if memory_reserve is None:
            memory_reserve = max(MIN_MEMORY_RESERVE_MIB, int(memory.total_mib * MEMORY_RESERVE_FRACTION))
            derived.append("memory_reserve_mib")
        disk_reserve = s.host_disk_reserve_mib
        if disk_reserve is None:
            disk_reserve = max(MIN_DISK_RESERVE_MIB, int(disk.total_mib * DISK_RESERVE_FRACTION))
            derived.append("disk_reserve_mib")
        max_sessions = s.max_sessions
        if max_sessions is None:
            max_sessions = max(1, (memory.total_mib - memory_reserve) // max(1, vm_memory))
            derived.append("max_sessions")
        warm_pool_size = s.warm_pool_size
        if warm_pool_size is None:
            fits = int((memory.total_mib - memory_reserve) * POOL_MEMORY_FRACTION) // max(1, vm_memory)
            warm_pool_size = max(1, min(os.cpu_count() or 1, fits))
            derived.append("warm_pool_size")
        concurrent_starts = s.max_concurrent_starts
        if concurrent_starts is None:
            concurrent_starts = os.cpu_count() or 1
            derived.append("concurrent_starts")
        return Limits(
            max_sessions=max_sessions, memory_reserve_mib=memory_reserve, disk_reserve_mib=disk_reserve,
            vm_memory_mib=vm_memory, vm_start_disk_mib=VM_START_DISK_MIB,
            writable_size_mib=s.writable_size_bytes // MIB, host_memory_total_mib=memory.total_mib,
            disk_total_mib=disk.total_mib, concurrent_starts=concurrent_starts,
            warm_pool_size=warm_pool_size, derived=tuple(derived),
        )

    def check(self, *, running_sessions: int, starting: int = 0, disk_growth_mib: int = 0) -> None:
        """Raise `errors.CapacityExhausted` unless one more VM may start now.

        `running_sessions`: VMs of this runtime that are up; `starting`: VMs being
        started (not counting the one asked about); `disk_growth_mib`: how much
        the writable disks of the running VMs may still grow (quota minus what
        they hold). The new VM is charged its whole quota, so guests together
        can never write the data directory's file system below the reserve."""
        limits = self.limits
        count = running_sessions + starting
        if count >= limits.max_sessions:
            raise errors.CapacityExhausted(
                f"session limit {limits.max_sessions} reached ({running_sessions} running, {starting} starting; "
                "CHASER_MAX_SESSIONS); retry when a session ends", retry_after_s=RETRY_SESSIONS_S)

        try:
            memory = self._meminfo()
        except (OSError, ValueError) as exc:
            raise errors.CapacityExhausted(f"host memory cannot be read ({exc}); not starting a VM",
                                           retry_after_s=RETRY_MEMORY_S) from exc
        available = memory.available_mib - starting * limits.vm_memory_mib
        if available < limits.vm_memory_mib + limits.memory_reserve_mib:
            pending = f" after the {starting} VMs still starting" if starting else ""
            raise errors.CapacityExhausted(
                f"host memory: {max(available, 0)} MiB available{pending}, a VM needs {limits.vm_memory_mib} MiB "
                f"plus the {limits.memory_reserve_mib} MiB reserve (CHASER_HOST_MEMORY_RESERVE_MIB)",
                retry_after_s=RETRY_MEMORY_S)

        try:
            disk = self._disk(self.data_dir)
        except OSError as exc:
            raise errors.CapacityExhausted(f"free disk space of {self.data_dir} cannot be read ({exc}); "
                                           "not starting a VM", retry_after_s=RETRY_DISK_S) from exc
        needed = max(limits.vm_start_disk_mib, limits.writable_size_mib)
        if disk.free_mib - disk_growth_mib < needed + limits.disk_reserve_mib:
            promised = f" ({disk_growth_mib} MiB of it promised to running VMs' disks)" if disk_growth_mib else ""
            raise errors.CapacityExhausted(
                f"disk: {disk.free_mib} MiB free on the file system of {self.data_dir}{promised}, a VM's disk "
                f"may grow to {needed} MiB, plus the {limits.disk_reserve_mib} MiB reserve "
                "(CHASER_HOST_DISK_RESERVE_MIB)", retry_after_s=RETRY_DISK_S)

    def describe(self) -> dict[str, object]:
        """The effective limits, for the log line at server start."""
        limits = self.limits
        return {
            "max_sessions": limits.max_sessions,
            "max_sessions_per_account": self.settings.max_sessions_per_account,
            "vm_memory_mib": limits.vm_memory_mib,
            "host_memory_total_mib": limits.host_memory_total_mib,
            "host_memory_reserve_mib": limits.memory_reserve_mib,
            "data_dir": str(self.data_dir),
            "disk_total_mib": limits.disk_total_mib,
            "host_disk_reserve_mib": limits.disk_reserve_mib,
            "vm_start_disk_mib": limits.vm_start_disk_mib,
            "writable_size_mib": limits.writable_size_mib,
            "concurrent_starts": limits.concurrent_starts,
            "warm_pool_size": limits.warm_pool_size,
            "derived": list(limits.derived),
        }
