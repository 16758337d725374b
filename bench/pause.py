"""Pause / resume / fork benchmark. Prints JSON: pause and resume time (to the first
exec) and the saved size for a guest that idles and one holding 200 MiB more in
memory; fork time for N = 1 and 4 (to every fork's first exec); resume against a
fresh create from the template; host PSS of a resumed VM against a fresh one.

    .venv/bin/python bench/pause.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from chaser.config import Settings
from chaser.diskcopy import copy_disk
from chaser.runtime import VMSpec
from chaser.vm.runtime import Runtime
from chaser.vm.saved import SavedState

# Holds 200 MiB of random bytes (incompressible, unlike zeros) until killed.
FILL = ("python3 -c \"import os, time; data = os.urandom(200 << 20); open('/tmp/filled', 'w').close(); "
        "time.sleep(10 ** 6)\"")


def median(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


async def first_exec(vm) -> None:
    result = await vm.exec("true")
    assert result.get("exit_code") == 0, result


async def pause_resume(runtime: Runtime, image: Path, work: Path, *, fill: bool, rounds: int) -> dict:
    vm = await runtime.start(VMSpec(image_disk=image, session_id="bench-pause"))
    try:
        if fill:
            await vm.exec(FILL, background=True)
            await vm.exec("until [ -e /tmp/filled ]; do sleep 0.1; done", timeout_ms=120_000)
        pause_ms, resume_ms, saved_mib, pss = [], [], [], []
        for index in range(rounds):
            state = work / f"{'filled' if fill else 'idle'}-{index}"
            disk = vm.writable_disk  # after the first round: the resumed VM's disk, kept where it is
            started = time.monotonic()
            await runtime.save(vm, state, keep_running=False)
            pause_ms.append((time.monotonic() - started) * 1000)
            saved_mib.append(os.stat(SavedState(state).memory_file).st_blocks * 512 / 2**20)
            if SavedState(state).disk_file.exists():
                disk = SavedState(state).disk_file
            spec = VMSpec(image_disk=image, writable_disk=disk, session_id="bench-pause")
            started = time.monotonic()
            vm = await runtime.resume(spec, state)
            await first_exec(vm)
            resume_ms.append((time.monotonic() - started) * 1000)
            pss.append(pss_mib(vm.pid))
        return {"pause_ms": median(pause_ms), "resume_to_first_exec_ms": median(resume_ms),
                "saved_memory_mib": median(saved_mib), "resumed_vm_pss_mib": median(pss), "rounds": rounds}
    finally:
        await vm.stop(graceful=False)


async def fork(runtime: Runtime, image: Path, work: Path, count: int) -> dict:
    source = await runtime.start(VMSpec(image_disk=image, session_id="bench-fork"))
    forks = []
    try:
        state = work / f"fork-{count}"
        started = time.monotonic()
        disk = await runtime.save(source, state, keep_running=True)
        saved_ms = (time.monotonic() - started) * 1000

        async def one(index: int):
            copy = work / f"fork-{count}-{index}.img"
            await asyncio.to_thread(copy_disk, disk, copy)  # sparse: the slot is 16 GiB
            vm = await runtime.resume(VMSpec(image_disk=image, writable_disk=copy, session_id=f"bench-fork-{index}"),
                                      state, hostname=f"fork-{index}")
            forks.append(vm)
            await first_exec(vm)

        await asyncio.gather(*(one(index) for index in range(count)))
        total_ms = (time.monotonic() - started) * 1000
        await first_exec(source)
        return {"count": count, "source_stopped_ms": round(saved_ms, 1), "all_forks_first_exec_ms": round(total_ms, 1),
                "fork_pss_mib": median([pss_mib(vm.pid) for vm in forks])}
    finally:
        await asyncio.gather(*(vm.stop(graceful=False) for vm in [*forks, source]), return_exceptions=True)


async def fresh_create(runtime: Runtime, image: Path, rounds: int) -> dict:
    times, pss = [], []
    for _ in range(rounds):
        started = time.monotonic()
        vm = await runtime.start(VMSpec(image_disk=image, session_id="bench-fresh"))
        await first_exec(vm)
        times.append((time.monotonic() - started) * 1000)
        pss.append(pss_mib(vm.pid))
        await vm.stop(graceful=False)
    return {"create_to_first_exec_ms": median(times), "vm_pss_mib": median(pss)}


async def main(rounds: int) -> dict:
    settings = Settings(warm_pool_size=0)
    runtime = Runtime(settings)
    await runtime.prepare_host()
    image = runtime.base_image_disk
    await runtime.ensure_template()
    settings.sessions_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-pause-", dir=settings.sessions_dir))
    try:
        fresh = await fresh_create(runtime, image, rounds)
        idle = await pause_resume(runtime, image, work, fill=False, rounds=rounds)
        filled = await pause_resume(runtime, image, work, fill=True, rounds=rounds)
        forks = [await fork(runtime, image, work, count) for count in (1, 4)]
    finally:
        await runtime.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return {
        "cores": os.cpu_count(), "accel": runtime.accel, "guest_memory_mib": settings.memory_mib,
        "fresh": fresh, "idle": idle, "filled_200mib": filled, "fork": forks,
        "resume_vs_fresh_create": round(idle["resume_to_first_exec_ms"] / fresh["create_to_first_exec_ms"], 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.rounds)), indent=2))
