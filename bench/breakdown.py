"""Where a start spends its time (docs/performance.md, "Time breakdown"): the steps of a
template restore, of `/init` after it, and of a warm pool claim, as medians in ms.

    .venv/bin/python bench/breakdown.py [--rounds 8]

Times the runtime's own steps by wrapping its methods in this process (nothing is
changed in how they run); the API's share is bench/startup.py's difference.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from chaser.config import Settings
from chaser.runtime import VMSpec
from chaser.runtime.egress import EgressPolicy
from chaser.vm.pool import DISKS
from chaser.vm.runtime import Runtime

STEPS = {
    "_prepare_writable": "restore: writable disk (a sparse file holding an ext4)",
    "launch_vm": "restore: launch QEMU (namespace, cgroup, jail, spawn, QMP)",
    "wait_loaded": "restore: migration load (device state; RAM is the template's mapping)",
    "wait_for_agent": "restore: cont → the agent answers",
}


class Steps:
    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}

    def add(self, label: str, seconds: float) -> None:
        self.times.setdefault(label, []).append(seconds)

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original: Callable[..., Awaitable[Any]] = getattr(owner, name)

        @functools.wraps(original)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return await original(*args, **kwargs)
            finally:
                self.add(label, time.monotonic() - started)

        setattr(owner, name, timed)

    async def time(self, label: str, awaitable: Awaitable[Any]) -> Any:
        started = time.monotonic()
        result = await awaitable
        self.add(label, time.monotonic() - started)
        return result

    def medians_ms(self) -> dict[str, float]:
        return {label: round(statistics.median(values) * 1000, 1) for label, values in self.times.items()}


async def main(rounds: int) -> dict:
    runtime = Runtime(Settings(warm_pool_size=0))
    await runtime.prepare_host()
    image = runtime.assets.base_rootfs
    await (await runtime.start(VMSpec(image_disk=image))).stop(graceful=False)  # the template exists
    steps = Steps()
    for name, label in STEPS.items():
        steps.wrap(runtime, name, label)
    try:
        for _ in range(rounds):
            vm = await steps.time("restore: total", runtime.boot(VMSpec(image_disk=image)))
            init = runtime._init_payload(VMSpec(image_disk=image))
            await steps.time("restored VM: /init (mounts the overlay, sets the identity)", vm.init(init))
            await steps.time("restored VM: network policy (nftables on the host; beside /init)",
                             vm.apply_network(EgressPolicy(internet=True)))
            vm.agent.set_token(init["token"])
            await steps.time("restored VM: first exec", vm.exec("true"))
            await steps.time("exec round trip (a later exec)", vm.exec("true"))
            await steps.time("agent HTTP round trip (a stat, no process)", vm.stat("/etc/hostname"))
            await vm.stop(graceful=False)
        for _ in range(rounds):
            vm = await runtime.boot(VMSpec(image_disk=image))
            await steps.time("pool, ahead of time: /prepare (mounts, one process run)", vm.prepare(DISKS))
            init = runtime._init_payload(VMSpec(image_disk=image))
            await steps.time("pool claim: /init (identity only)", vm.init(init))
            vm.agent.set_token(init["token"])
            await steps.time("pool claim: first exec", vm.exec("true"))
            await vm.stop(graceful=False)
    finally:
        await runtime.stop_all()
    return {"accel": runtime.accel, "rounds": rounds, "median_ms": steps.medians_ms()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.rounds)), indent=2))
