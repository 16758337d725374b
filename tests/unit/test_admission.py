"""Admission control (chaser/vm/admission.py) with fake host reads."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from chaser import errors
from chaser.config import Settings
from chaser.vm.admission import Admission, DiskSpace, HostMemory, existing_ancestor, read_disk, read_meminfo

GIB_MIB = 1024


class FakeHost:
    def __init__(self, *, total_mib=16 * GIB_MIB, available_mib=12 * GIB_MIB, disk_total_mib=100 * GIB_MIB,
                 disk_free_mib=50 * GIB_MIB) -> None:
        self.total_mib, self.available_mib = total_mib, available_mib
        self.disk_total_mib, self.disk_free_mib = disk_total_mib, disk_free_mib
        self.disk_paths: list[Path] = []
        self.memory_error: Exception | None = None

    def meminfo(self) -> HostMemory:
        if self.memory_error is not None:
            raise self.memory_error
        return HostMemory(total_mib=self.total_mib, available_mib=self.available_mib)

    def disk(self, path: Path) -> DiskSpace:
        self.disk_paths.append(path)
        return DiskSpace(total_mib=self.disk_total_mib, free_mib=self.disk_free_mib)


def admission(tmp_path, host: FakeHost, **overrides) -> Admission:
    settings = Settings(home=tmp_path / "home", config_file=tmp_path / "config.json", **overrides)
    return Admission(settings, meminfo=host.meminfo, disk=host.disk)


def test_defaults_are_derived_from_the_host(tmp_path):
    host = FakeHost(total_mib=16 * GIB_MIB, disk_total_mib=100 * GIB_MIB)
    a = admission(tmp_path, host)  # 512 MiB guest + 256 MiB overhead
    assert a.limits.vm_memory_mib == 768
    assert a.limits.memory_reserve_mib == 1638  # 10 % of 16 GiB > 1024
    assert a.limits.disk_reserve_mib == 5120  # 5 % of 100 GiB > 2048
    assert a.limits.max_sessions == (16384 - 1638) // 768 == 19
    assert a.limits.concurrent_starts == (os.cpu_count() or 1)
    assert a.limits.warm_pool_size == 1  # a tenth of (16384 - 1638) MiB holds one 768 MiB VM
    assert set(a.limits.derived) == {"max_sessions", "memory_reserve_mib", "disk_reserve_mib", "concurrent_starts",
                                     "warm_pool_size"}
    assert host.disk_paths == [tmp_path / "home"]
    described = a.describe()
    assert described["max_sessions"] == 19 and described["host_memory_reserve_mib"] == 1638
    assert described["host_disk_reserve_mib"] == 5120 and described["max_sessions_per_account"] == 50
    assert described["writable_size_mib"] == 4096 and described["data_dir"] == str(tmp_path / "home")


def test_small_host_minimums(tmp_path):
    a = admission(tmp_path, FakeHost(total_mib=2 * GIB_MIB, available_mib=1500, disk_total_mib=10 * GIB_MIB))
    assert a.limits.memory_reserve_mib == 1024 and a.limits.disk_reserve_mib == 2048
    assert a.limits.max_sessions == 1  # (2048 - 1024) // 768
    tiny = admission(tmp_path, FakeHost(total_mib=1024, available_mib=900))
    assert tiny.limits.max_sessions == 1  # never 0 by derivation


def test_settings_win_over_the_derivation(tmp_path):
    a = admission(tmp_path, FakeHost(), max_sessions=3, host_memory_reserve_mib=100, host_disk_reserve_mib=200,
                  max_concurrent_starts=4, warm_pool_size=3, memory_mib=1024, vm_memory_overhead_mib=128)
    assert (a.limits.max_sessions, a.limits.memory_reserve_mib, a.limits.disk_reserve_mib) == (3, 100, 200)
    assert a.limits.vm_memory_mib == 1152 and a.limits.concurrent_starts == 4 and a.limits.derived == ()
    # an explicit reserve feeds the derived session limit
    b = admission(tmp_path, FakeHost(total_mib=8192), host_memory_reserve_mib=512)
    assert b.limits.max_sessions == (8192 - 512) // 768
    with pytest.raises(ValueError):
        admission(tmp_path, FakeHost(), max_sessions=-1)


def test_session_limit(tmp_path):
    a = admission(tmp_path, FakeHost(), max_sessions=2)
    a.check(running_sessions=0)
    a.check(running_sessions=1)
    with pytest.raises(errors.CapacityExhausted) as info:
        a.check(running_sessions=2)
    exc = info.value
    assert exc.status == 503 and exc.code == "capacity_exhausted"
    assert "session limit 2 reached" in exc.message and "CHASER_MAX_SESSIONS" in exc.message
    assert exc.headers == {"Retry-After": str(exc.retry_after_s)} and exc.retry_after_s > 0
    with pytest.raises(errors.CapacityExhausted):  # VMs being started count
        a.check(running_sessions=1, starting=1)
    zero = admission(tmp_path, FakeHost(), max_sessions=0)
    with pytest.raises(errors.CapacityExhausted):
        zero.check(running_sessions=0)


def test_host_memory(tmp_path):
    host = FakeHost(available_mib=768 + 1024)
    a = admission(tmp_path, host, max_sessions=100, host_memory_reserve_mib=1024)
    a.check(running_sessions=5)  # exactly one VM's worst case plus the reserve
    host.available_mib -= 1
    with pytest.raises(errors.CapacityExhausted) as info:
        a.check(running_sessions=5)
    message = info.value.message
    assert "host memory: 1791 MiB available" in message and "a VM needs 768 MiB" in message
    assert "1024 MiB reserve" in message and info.value.headers["Retry-After"]
    # VMs still starting have not taken their memory yet: it is charged for them
    host.available_mib = 768 * 2 + 1024
    a.check(running_sessions=0, starting=0)
    a.check(running_sessions=0, starting=1)
    with pytest.raises(errors.CapacityExhausted, match="still starting"):
        a.check(running_sessions=0, starting=2)


def test_host_memory_unreadable_fails_closed(tmp_path):
    host = FakeHost()
    a = admission(tmp_path, host)
    host.memory_error = OSError("no /proc")
    with pytest.raises(errors.CapacityExhausted, match="host memory cannot be read"):
        a.check(running_sessions=0)


def test_disk(tmp_path):
    host = FakeHost(disk_free_mib=2048 + 64)
    a = admission(tmp_path, host, max_sessions=100, host_disk_reserve_mib=2048, writable_size_bytes=32 * 2**20)
    a.check(running_sessions=0)
    host.disk_free_mib -= 1
    with pytest.raises(errors.CapacityExhausted) as info:
        a.check(running_sessions=0)
    message = info.value.message
    assert message.startswith("disk: 2111 MiB free") and "2048 MiB reserve" in message
    assert "CHASER_HOST_DISK_RESERVE_MIB" in message and info.value.headers["Retry-After"]


def test_disk_keeps_room_for_what_running_guests_may_still_write(tmp_path):
    host = FakeHost(disk_free_mib=2048 + 3 * 4096)
    a = admission(tmp_path, host, max_sessions=100, host_disk_reserve_mib=2048, writable_size_bytes=4 * 2**30)
    a.check(running_sessions=2, disk_growth_mib=2 * 4096)  # two empty 4 GiB disks running: one more fits
    with pytest.raises(errors.CapacityExhausted, match="promised to running VMs' disks"):
        a.check(running_sessions=3, disk_growth_mib=3 * 4096 - 1)


def test_session_limit_is_checked_first(tmp_path):
    a = admission(tmp_path, FakeHost(available_mib=0, disk_free_mib=0), max_sessions=1)
    with pytest.raises(errors.CapacityExhausted, match="session limit"):
        a.check(running_sessions=1)
    with pytest.raises(errors.CapacityExhausted, match="host memory"):
        a.check(running_sessions=0)


def test_real_host_reads(tmp_path):
    memory = read_meminfo()
    assert memory.total_mib > 0 and 0 <= memory.available_mib <= memory.total_mib
    missing = tmp_path / "not" / "yet"
    assert existing_ancestor(missing) == tmp_path
    disk = read_disk(missing)
    assert disk.total_mib > 0 and 0 <= disk.free_mib <= disk.total_mib
    Admission(Settings(home=missing, config_file=tmp_path / "c.json")).describe()


def test_meminfo_parse(tmp_path):
    path = tmp_path / "meminfo"
    path.write_text("MemTotal:       16384000 kB\nMemFree:  100 kB\nMemAvailable:    8192000 kB\n")
    assert read_meminfo(str(path)) == HostMemory(total_mib=16000, available_mib=8000)
    path.write_text("MemTotal:       16384000 kB\n")
    with pytest.raises(ValueError):
        read_meminfo(str(path))


async def test_starts_beyond_the_start_queue_wait_their_turn(tmp_path):
    a = admission(tmp_path, FakeHost(total_mib=16 * GIB_MIB, disk_total_mib=100 * GIB_MIB), max_concurrent_starts=2)
    assert a.limits.concurrent_starts == 2 and "concurrent_starts" not in a.limits.derived
    running: list[int] = []
    most = 0
    release = asyncio.Event()

    async def start(n: int) -> None:
        nonlocal most
        async with a.start_slot:
            running.append(n)
            most = max(most, len(running))
            await release.wait()
            running.remove(n)

    tasks = [asyncio.ensure_future(start(n)) for n in range(5)]
    for _ in range(10):
        await asyncio.sleep(0)
    assert running == [0, 1]  # in order of arrival; the other three wait
    release.set()
    await asyncio.gather(*tasks)
    assert most == 2 and running == []


def test_a_start_queue_below_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match="MAX_CONCURRENT_STARTS"):
        admission(tmp_path, FakeHost(total_mib=16 * GIB_MIB, disk_total_mib=100 * GIB_MIB), max_concurrent_starts=0)


def test_the_warm_pool_default_follows_cpus_and_memory(tmp_path):
    big = admission(tmp_path, FakeHost(total_mib=64 * GIB_MIB))  # a tenth of (65536 - 6553) MiB: 7 VMs
    assert big.limits.warm_pool_size == min(os.cpu_count() or 1, 7)
    tiny = admission(tmp_path, FakeHost(total_mib=2 * GIB_MIB, available_mib=1500))
    assert tiny.limits.warm_pool_size == 1  # at least one
    assert admission(tmp_path, FakeHost(), warm_pool_size=0).limits.warm_pool_size == 0
    assert "warm_pool_size" not in admission(tmp_path, FakeHost(), warm_pool_size=5).limits.derived
    with pytest.raises(ValueError, match="WARM_POOL_SIZE"):
        admission(tmp_path, FakeHost(), warm_pool_size=-1)
