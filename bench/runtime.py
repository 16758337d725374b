"""Runtime benchmark. Prints JSON: cold boot, restore-to-first-exec (median and
p95), the same from the warm pool, exec round trip, file throughput, RSS/PSS
and idle CPU per VM.

    .venv/bin/python bench/runtime.py [--restores 10] [--idle-vms 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

from chaser.config import Settings
from chaser.runtime import VMSpec
from chaser.vm.runtime import Runtime


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 1), "p95": round(percentile(values, 0.95), 1), "n": len(values)}


def memory_kib(pid: int) -> tuple[int, int]:
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


async def idle_cost(vms: list, window: float = 10.0) -> dict:
    """Mean CPU (%) and RSS/PSS (MiB) per VM over `window` seconds of idling."""
    for machine in vms:
        await machine.exec("true")
    await asyncio.sleep(3)  # let start-up work settle
    ticks_before = {m.pid: cpu_ticks(m.pid) for m in vms}
    await asyncio.sleep(window)
    hz = os.sysconf("SC_CLK_TCK")
    cpu = [(cpu_ticks(m.pid) - ticks_before[m.pid]) / hz / window * 100 for m in vms]
    memory = [memory_kib(m.pid) for m in vms]
    return {
        "cpu_percent_per_vm": round(statistics.mean(cpu), 2),
        "rss_mib_per_vm": round(statistics.mean(r for r, _ in memory) / 1024, 1),
        "pss_mib_per_vm": round(statistics.mean(p for _, p in memory) / 1024, 1),
    }


async def pool_starts(image: Path, count: int) -> dict:
    """Start → first exec when a warm VM is waiting (the pool refills between runs)."""
    runtime = Runtime(Settings(warm_pool_size=1))
    runtime.warm_pool(image)
    times = []
    for _ in range(count):
        while not runtime.pool.ready:  # noqa: ASYNC110 - polling the pool, outside the timed part
            await asyncio.sleep(0.05)
        started = time.monotonic()
        vm = await runtime.start(VMSpec(image_disk=image))
        await vm.exec("true")
        times.append((time.monotonic() - started) * 1000)
        assert vm.pooled
        await vm.stop(graceful=False)
    await runtime.stop_all()
    return summary(times)


async def main(restores: int, idle_vms: int) -> dict:
    runtime = Runtime(Settings(warm_pool_size=0))  # measure the restore path itself
    image = runtime.assets.base_rootfs
    await runtime.ensure_template()
    result: dict = {"accel": runtime.accel}

    started = time.monotonic()
    cold = await runtime.start(VMSpec(image_disk=image, boot="cold"))
    await cold.exec("true")
    result["cold_boot_to_first_exec_ms"] = round((time.monotonic() - started) * 1000, 1)
    await cold.stop(graceful=False)

    restore_ms, ready_ms = [], []
    for _ in range(restores):
        started = time.monotonic()
        vm = await runtime.start(VMSpec(image_disk=image))
        ready_ms.append((time.monotonic() - started) * 1000)
        await vm.exec("true")
        restore_ms.append((time.monotonic() - started) * 1000)
        await vm.stop(graceful=False)
    result["restore_to_ready_ms"] = summary(ready_ms)
    result["restore_to_first_exec_ms"] = summary(restore_ms)
    result["warm_pool_start_to_first_exec_ms"] = await pool_starts(image, restores)

    vm = await runtime.start(VMSpec(image_disk=image))
    round_trips = []
    for _ in range(30):
        started = time.monotonic()
        await vm.exec("true")
        round_trips.append((time.monotonic() - started) * 1000)
    result["exec_round_trip_ms"] = summary(round_trips)

    payload = os.urandom(16 * 1024 * 1024)
    started = time.monotonic()
    await vm.write_file("/workspace/bench.bin", payload)
    upload_s = time.monotonic() - started
    started = time.monotonic()
    back = b"".join([chunk async for chunk in vm.stream_file("/workspace/bench.bin")])
    download_s = time.monotonic() - started
    assert back == payload
    result["file_write_mb_s"] = round(16 / upload_s, 1)
    result["file_read_mb_s"] = round(16 / download_s, 1)
    await vm.stop(graceful=False)

    idle = [await runtime.start(VMSpec(image_disk=image)) for _ in range(idle_vms)]
    cost = await idle_cost(idle)
    result["idle_vms"] = idle_vms
    result["idle_cpu_percent_per_vm"] = cost["cpu_percent_per_vm"]
    result["rss_mib_per_idle_vm"] = cost["rss_mib_per_vm"]
    result["pss_mib_per_idle_vm"] = cost["pss_mib_per_vm"]
    await runtime.stop_all()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--restores", type=int, default=10)
    parser.add_argument("--idle-vms", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.restores, args.idle_vms)), indent=2))
