"""The warm pool over a boot callable: what it keeps, what it hands out, what it throws away."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from chaser.runtime.spec import VMSpec
from chaser.vm.pool import BACKGROUND_CPU_WEIGHT, DISKS, SESSION_CPU_WEIGHT, WarmPool
from tests.support import async_wait_until

IMAGE = Path("/images/base.erofs")
OTHER = Path("/images/other.erofs")
WRITABLE = 1 << 30


class PoolVM:
    def __init__(self, spec: VMSpec, *, prepare_error: Exception | None = None) -> None:
        self.spec = spec
        self.pooled = False
        self.stopped = False
        self.dead = False
        self.prepared: list[dict[str, str]] = []
        self.prepare_error = prepare_error
        self.cpu_weights: list[int] = []
        self.exited = asyncio.Event()

    @property
    def alive(self) -> bool:
        return not self.stopped and not self.dead

    def die(self) -> None:
        self.dead = True
        self.exited.set()

    async def wait_exit(self, timeout: float | None = None) -> bool:
        await self.exited.wait()
        return True

    async def prepare(self, disks: dict[str, str]) -> dict[str, Any]:
        if self.prepare_error is not None:
            raise self.prepare_error
        self.prepared.append(disks)
        return {"prepared": True}

    def set_cpu_weight(self, weight: int) -> None:
        self.cpu_weights.append(weight)

    async def stop(self, *, graceful: bool = True) -> None:
        self.stopped = True
        self.exited.set()


class Booter:
    def __init__(self) -> None:
        self.booted: list[PoolVM] = []
        self.calls = 0  # counted on entry: a boot that was started, finished or not
        self.fail_next = 0
        self.prepare_error: Exception | None = None

    async def __call__(self, spec: VMSpec) -> PoolVM:
        self.calls += 1
        await asyncio.sleep(0)  # a real boot yields to the loop
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("boot failed")
        vm = PoolVM(spec, prepare_error=self.prepare_error)
        self.booted.append(vm)
        return vm


async def until(predicate, timeout: float = 5.0) -> None:
    await async_wait_until(predicate, timeout, interval=0.001)


def plain(image: Path = IMAGE, **overrides: Any) -> VMSpec:
    return VMSpec(image_disk=image, session_id="ses_1", **overrides)


@pytest.fixture
def booter() -> Booter:
    return Booter()


async def test_fills_to_size_with_prepared_vms_of_the_image(booter: Booter) -> None:
    pool = WarmPool(booter, size=2, writable_size_bytes=WRITABLE)
    pool.start(IMAGE)
    await until(lambda: len(pool.ready) == 2)
    assert [vm.spec.image_disk for vm in pool.ready] == [IMAGE, IMAGE]
    assert all(vm.pooled and vm.prepared == [DISKS] for vm in pool.ready)
    await pool.close()


async def test_take_hands_out_a_ready_vm_and_refills(booter: Booter) -> None:
    pool = WarmPool(booter, size=1, writable_size_bytes=WRITABLE)
    pool.start(IMAGE)
    await until(lambda: len(pool.ready) == 1)
    first = pool.ready[0]
    assert pool.take(plain()) is first
    await until(lambda: len(pool.ready) == 1)
    assert pool.ready[0] is not first and len(booter.booted) == 2
    await pool.close()


async def test_a_vm_waits_at_a_low_cpu_weight_and_gets_the_normal_one_when_taken(booter: Booter) -> None:
    pool = WarmPool(booter, size=1, writable_size_bytes=WRITABLE)
    pool.start(IMAGE)
    await until(lambda: len(pool.ready) == 1)
    vm = pool.ready[0]
    assert vm.cpu_weights == [BACKGROUND_CPU_WEIGHT]
    assert pool.take(plain()) is vm
    assert vm.cpu_weights == [BACKGROUND_CPU_WEIGHT, SESSION_CPU_WEIGHT]
    await pool.close()


async def test_no_refill_boots_while_a_session_starts(booter: Booter) -> None:
    pool = WarmPool(booter, size=1, writable_size_bytes=WRITABLE)
    pool.start(IMAGE)
    await until(lambda: len(pool.ready) == 1)
    with pool.starting():
        with pool.starting():
            assert pool.take(plain()) is not None
        for _ in range(20):  # loop iterations in which an unheld filler would have booted
            await asyncio.sleep(0)
        assert booter.calls == 1 and pool.ready == []
    await until(lambda: len(pool.ready) == 1)  # the last start to end refills
    assert booter.calls == 2
    await pool.close()


@pytest.mark.parametrize("overrides", [
    {"writable_disk": Path("/ws/disk.img")}, {"user": "app"}, {"workdir": "/src"}, {"boot": "cold"},
    {"writable_size_bytes": 2 * WRITABLE},
])
async def test_specs_a_pooled_vm_cannot_serve_get_none(booter: Booter, overrides: dict[str, Any]) -> None:
    pool = WarmPool(booter, size=1, writable_size_bytes=WRITABLE)
    pool.start(IMAGE)
    await until(lambda: len(pool.ready) == 1)
    assert pool.take(plain(**overrides)) is None
    assert pool.take(plain(OTHER)) is None
    assert len(pool.ready) == 1  # nothing was spent
    await pool.close()


async def test_a_dead_vm_is_never_handed_out(booter: Booter) -> None:
    pool = WarmPool(booter, size=2, writable_size_bytes=WRITABLE)
    pool.start(IMAGE)
    await until(lambda: len(pool.ready) == 2)
    dead, alive = pool.ready
    dead.dead = True
    assert pool.take(plain()) is alive
    await until(lambda: dead.stopped)
    await pool.close()


async def test_a_new_image_discards_the_old_vms(booter: Booter) -> None:
    pool = WarmPool(booter, size=1, writable_size_bytes=WRITABLE)
    pool.start(IMAGE)
    await until(lambda: len(pool.ready) == 1)
    old = pool.ready[0]
    pool.start(OTHER)
    await until(lambda: len(pool.ready) == 1 and pool.ready[0].spec.image_disk == OTHER)
    await until(lambda: old.stopped)
    await pool.close()


async def test_boot_and_prepare_failures_are_retried_and_leave_nothing(booter: Booter) -> None:
    pool = WarmPool(booter, size=1, writable_size_bytes=WRITABLE, retry_after_s=0.001)
    booter.fail_next = 2
    pool.start(IMAGE)
    await until(lambda: len(pool.ready) == 1)
    assert len(booter.booted) == 1

    broken = WarmPool(booter, size=1, writable_size_bytes=WRITABLE, retry_after_s=0.001)
    booter.prepare_error = RuntimeError("mount failed")
    broken.start(IMAGE)
    await until(lambda: len(booter.booted) >= 4)
    assert broken.ready == []
    assert all(vm.stopped for vm in booter.booted[1:-1])  # every VM that failed /prepare was stopped
    await broken.close()
    await pool.close()


async def test_close_stops_the_ready_vms_and_the_filler(booter: Booter) -> None:
    pool = WarmPool(booter, size=2, writable_size_bytes=WRITABLE)
    pool.start(IMAGE)
    await until(lambda: len(pool.ready) == 2)
    ready = list(pool.ready)
    await pool.close()
    assert all(vm.stopped for vm in ready) and pool.ready == []
    pool.refill()  # a closed pool boots nothing more
    await asyncio.sleep(0)  # one loop iteration: a fill task refill() made would have called boot by now
    assert booter.calls == 2


async def test_size_zero_never_boots(booter: Booter) -> None:
    pool = WarmPool(booter, size=0, writable_size_bytes=WRITABLE)
    pool.start(IMAGE)
    await asyncio.sleep(0)  # one loop iteration: a fill task start() made would have called boot by now
    assert booter.calls == 0 and pool.take(plain()) is None
    await pool.close()


async def test_a_ready_vm_that_dies_is_replaced_at_once():
    booter = Booter()
    pool = WarmPool(booter, size=2, writable_size_bytes=WRITABLE, retry_after_s=0.01)
    pool.start(IMAGE)
    await async_wait_until(lambda: len(pool.ready) == 2, 5, interval=0.01, message="pool never filled")
    victim = pool.ready[0]
    victim.die()  # killed from outside, not taken by anyone
    await async_wait_until(lambda: victim not in pool.ready and len(pool.ready) == 2 and booter.calls == 3, 5,
                           interval=0.01, message="the dead VM was not replaced")
    assert victim.stopped  # its leftovers are cleaned up
    taken = pool.take(VMSpec(image_disk=IMAGE))
    assert taken is not None and taken.alive and taken is not victim
    taken.die()  # a VM handed out is no longer the pool's business
    await async_wait_until(lambda: len(pool.ready) == 2, 5, interval=0.01, message="pool not refilled after take")
    assert booter.calls == 4 and not taken.stopped
    await pool.close()
    assert all(vm.stopped for vm in booter.booted if vm is not taken)


async def test_a_started_session_holds_the_refill_until_its_first_call_or_the_timeout(booter: Booter) -> None:
    pool = WarmPool(booter, size=1, writable_size_bytes=WRITABLE)
    pool.start(IMAGE)
    await until(lambda: len(pool.ready) == 1)
    first_call = asyncio.Event()
    with pool.starting():
        assert pool.take(plain()) is not None
        pool.hold_until(first_call.wait(), timeout_s=60)
    for _ in range(20):
        await asyncio.sleep(0)
    assert booter.calls == 1  # the start ended, its first call has not
    first_call.set()
    await until(lambda: len(pool.ready) == 1)

    pool.take(plain())
    pool.hold_until(asyncio.Event().wait(), timeout_s=0.01)  # a session that never calls
    await until(lambda: len(pool.ready) == 1)
    assert booter.calls == 3
    await pool.close()
