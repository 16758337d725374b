"""Network and jail benchmark. Prints JSON:

* guest → test-host TCP connect latency and download throughput, through the
  per-VM namespace and through slirp (both against a host in a test network
  namespace this script creates: no traffic leaves the machine);
* restore → first exec with the ready-namespace pool and without it;
* idle CPU and PSS per jailed VM.

    .venv/bin/python bench/network.py [--restores 10] [--idle-vms 3] [--megabytes 64]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.runtime import idle_cost, summary
from chaser.config import Settings
from chaser.runtime import VMSpec
from chaser.vm.runtime import Runtime
from tests.integration.testnet import INTERNET_NET, LabNetwork

BULK_PORT = 9000
TARGET = f"{INTERNET_NET}.10"
BULK_SERVER = rf"""
import socket, threading
def serve(conn, size):
    chunk = b"\0" * 65536
    with conn:
        for _ in range(size // len(chunk)):
            conn.sendall(chunk)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {BULK_PORT})); s.listen(64)
while True:
    conn, _ = s.accept()
    size = int(conn.recv(32).decode())
    threading.Thread(target=serve, args=(conn, size), daemon=True).start()
"""
# Runs in the guest: connect latencies (ms), then one download (MB/s).
GUEST_PROBE = r"""
import json, socket, sys, time
host, port, connects, megabytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
latencies = []
for _ in range(connects):
    started = time.monotonic()
    s = socket.create_connection((host, 80), timeout=10)
    latencies.append((time.monotonic() - started) * 1000)
    s.close()
s = socket.create_connection((host, port), timeout=10)
s.sendall(str(megabytes * 1024 * 1024).encode().ljust(32))
started, received = time.monotonic(), 0
while chunk := s.recv(1 << 20):
    received += len(chunk)
elapsed = time.monotonic() - started
print(json.dumps({"latencies": latencies, "mb_s": received / 1e6 / elapsed, "bytes": received}))
"""


async def guest_network(mode: str, image: Path, megabytes: int) -> dict:
    runtime = Runtime(Settings(network=mode, warm_pool_size=0))
    await runtime.prepare_host()
    vm = await runtime.start(VMSpec(image_disk=image))
    try:
        script = base64.b64encode(GUEST_PROBE.encode()).decode()
        result = await vm.exec(f"python3 -c \"$(echo {script} | base64 -d)\" {TARGET} {BULK_PORT} 20 {megabytes}",
                               timeout_ms=300_000)
        assert result["exit_code"] == 0, result
        measured = json.loads(base64.b64decode(result["output"]))  # the agent sends output base64-encoded
        assert measured["bytes"] == megabytes * 1024 * 1024
        return {"connect_ms": summary(measured["latencies"]), "download_mb_s": round(measured["mb_s"], 1)}
    finally:
        await vm.stop(graceful=False)
        await runtime.stop_all()


async def restores(image: Path, count: int, *, ready_namespaces: int) -> dict:
    runtime = Runtime(Settings(network="isolated", warm_pool_size=0, network_ready_pool_size=ready_namespaces))
    await runtime.prepare_host()
    await runtime.ensure_template()
    times = []
    for _ in range(count):
        while len(runtime.network._ready) < ready_namespaces:  # noqa: ASYNC110 - polling the pool, outside the timed part
            await asyncio.sleep(0.05)
        started = time.monotonic()
        vm = await runtime.start(VMSpec(image_disk=image))
        await vm.exec("true")
        times.append((time.monotonic() - started) * 1000)
        await vm.stop(graceful=False)
    await runtime.stop_all()
    return summary(times)


async def idle_jailed(image: Path, count: int) -> dict:
    runtime = Runtime(Settings(network="isolated", warm_pool_size=0))
    await runtime.prepare_host()
    vms = [await runtime.start(VMSpec(image_disk=image, session_id=f"idle-{n}")) for n in range(count)]
    try:
        return {"vms": count, **await idle_cost(vms)}
    finally:
        await runtime.stop_all()


async def main(count: int, idle_vms: int, megabytes: int) -> dict:
    lab = LabNetwork().start()
    lab.internet.spawn(sys.executable, "-c", BULK_SERVER)
    try:
        lab.check_routes()
        image = Runtime(Settings()).assets.base_rootfs
        result: dict = {}
        result["namespace"] = await guest_network("isolated", image, megabytes)
        result["slirp"] = await guest_network("slirp", image, megabytes)
        result["download_ratio_namespace_to_slirp"] = round(
            result["namespace"]["download_mb_s"] / result["slirp"]["download_mb_s"], 2)
        result["restore_to_first_exec_ms"] = {
            "with_ready_namespaces": await restores(image, count, ready_namespaces=2),
            "without": await restores(image, count, ready_namespaces=0),
        }
        result["idle_jailed"] = await idle_jailed(image, idle_vms)
        return result
    finally:
        lab.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--restores", type=int, default=10)
    parser.add_argument("--idle-vms", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=64)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.restores, args.idle_vms, args.megabytes)), indent=2))
