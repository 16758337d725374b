"""Start, burst and density figures through the real API (docs/performance.md):
create → first exec (sequential), 20 creates at once, exec round trip through
the API against straight to the agent, 16 MiB upload and download through the
API, and the host cost of many idle sessions. Run once with the warm pool on
and once with it off, side by side; ratios are to the exec round trip straight
to an agent (a VM of an in-process runtime), measured call for call beside the
API's so that both see the same load.

    .venv/bin/python bench/startup.py [--creates 50] [--burst 20] [--idle 100] [--pool-size 20]

Starts its own `chaser server`s (private homes, the default guest assets),
prints one JSON document and removes what it made.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.runtime import cpu_ticks, memory_kib, percentile
from chaser.config import Settings
from tests.integration.conftest import ServerProcess, qemu_pids_under

MIB = 1024 * 1024
# Round trips are measured the same way on both paths: after a few calls (a restored VM's first
# ones still fault its memory in), then ROUND_TRIPS of them.
WARM_UP_CALLS = 10
ROUND_TRIPS = 50


def summary_ms(values: list[float]) -> dict:
    return {"median": round(statistics.median(values) * 1000, 1), "p95": round(percentile(values, 0.95) * 1000, 1),
            "n": len(values)}


# Admission charges every VM its whole disk quota and its worst-case memory (chaser/vm/admission.py):
# holding 100 sessions on one small host takes raising the session limits and a smaller quota.
WRITABLE_QUOTA_BYTES = 512 * MIB


def server_env(pool_size: int, sessions: int) -> dict[str, str]:
    return {"CHASER_WARM_POOL_SIZE": str(pool_size), "CHASER_MAX_SESSIONS": str(sessions + 10),
            "CHASER_MAX_SESSIONS_PER_ACCOUNT": str(sessions + 10), "CHASER_SESSION_IDLE_TIMEOUT_S": "3600",
            "CHASER_WRITABLE_SIZE_BYTES": str(WRITABLE_QUOTA_BYTES)}


def pool_full_count(server: ServerProcess, size: int) -> int:
    """How often the server has logged its pool full (chaser/vm/pool.py logs each refill)."""
    return server.log_path.read_text(errors="replace").count(f"warm pool: {size} of {size} ready")


def wait_pool_full(server: ServerProcess, size: int, seen: int, timeout: float = 600) -> int:
    deadline = time.monotonic() + timeout
    while (count := pool_full_count(server, size)) <= seen:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the warm pool did not refill: {server.log()}")
        time.sleep(0.05)
    return count


def create_and_exec(api: httpx.Client) -> tuple[str, float]:
    started = time.monotonic()
    response = api.post("/v1/sessions", json={"ephemeral": True})
    if response.is_error:
        raise RuntimeError(f"create: {response.status_code} {response.text}")
    session_id = response.json()["id"]
    result = api.post(f"/v1/sessions/{session_id}/exec", json={"command": "true"})
    result.raise_for_status()
    assert result.json()["exit_code"] == 0, result.text
    return session_id, time.monotonic() - started


def boot_methods(api: httpx.Client, session_ids: set[str], timeout: float = 30) -> dict[str, int]:
    """How each session's VM started, from the audit log (`session.created` events; the log is
    written in batches, so the newest may take a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = _boot_methods(api, session_ids)
        if sum(counts.values()) >= len(session_ids) or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


def _boot_methods(api: httpx.Client, session_ids: set[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    before = None
    while True:
        page = api.get("/v1/audit/events", params={"limit": 200, **({"before": before} if before else {})}).json()
        for event in page["events"]:
            if event["action"] == "session.created" and event["resource_id"] in session_ids:
                boot = (event.get("metadata") or {}).get("boot", "unknown")
                counts[boot] = counts.get(boot, 0) + 1
        if len(page["events"]) < 200:
            return counts
        before = page["events"][-1]["id"]


def sequential(server: ServerProcess, api: httpx.Client, creates: int, pool_size: int) -> dict:
    """`creates` creates one after the other; with the pool on, each waits for the pool to be full first
    (that wait is not timed): the figure is a claim, not a restore."""
    seen = pool_full_count(server, pool_size) if pool_size else 0
    if pool_size and seen == 0:
        seen = wait_pool_full(server, pool_size, 0) - 1
    times, ids = [], set()
    for _ in range(creates):
        if pool_size:
            seen = wait_pool_full(server, pool_size, seen)
        session_id, elapsed = create_and_exec(api)
        times.append(elapsed)
        ids.add(session_id)
        api.delete(f"/v1/sessions/{session_id}").raise_for_status()
    result = summary_ms(times)
    result["p95_over_median"] = round(result["p95"] / result["median"], 2)
    result["boot"] = boot_methods(api, ids)
    return result


def burst(server: ServerProcess, count: int, pool_size: int) -> dict:
    """`count` creates + exec at once, each on its own connection."""
    if pool_size:
        wait_pool_full(server, pool_size, pool_full_count(server, pool_size) - 1)
    clients = [server.client() for _ in range(count)]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(count) as threads:
        results = list(threads.map(create_and_exec, clients))
    wall = time.monotonic() - started
    api = clients[0]
    ids = {session_id for session_id, _ in results}
    boots = boot_methods(api, ids)
    for session_id in ids:
        api.delete(f"/v1/sessions/{session_id}").raise_for_status()
    for client in clients:
        client.close()
    each = [elapsed for _, elapsed in results]
    return {"all_done_s": round(wall, 2), "each_ms": summary_ms(each), "boot": boots}


class DirectAgent:
    """One VM of an in-process runtime (no API), on a thread and event loop of its own: its exec
    round trip is measured call for call beside the API's, so both see the same load."""

    def __init__(self, home: Path) -> None:
        from chaser.runtime import VMSpec
        from chaser.vm.runtime import Runtime

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runtime = Runtime(Settings(home=home, warm_pool_size=0))
        self.vm = self.call(self.runtime.start(VMSpec(image_disk=self.runtime.assets.base_rootfs)))
        for _ in range(WARM_UP_CALLS):
            self.exec_s()

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def exec_s(self) -> float:
        started = time.monotonic()
        self.call(self.vm.exec("true"))
        return time.monotonic() - started

    def transfer(self) -> dict:
        async def both() -> dict:
            payload = os.urandom(16 * MIB)
            started = time.monotonic()
            await self.vm.write_file("/workspace/bench.bin", payload)
            upload_s = time.monotonic() - started
            started = time.monotonic()
            back = b"".join([chunk async for chunk in self.vm.stream_file("/workspace/bench.bin")])
            download_s = time.monotonic() - started
            assert back == payload
            return {"write_16mib_mb_s": round(16 * MIB / 1e6 / upload_s, 1),
                    "read_16mib_mb_s": round(16 * MIB / 1e6 / download_s, 1)}
        return self.call(both())

    def close(self) -> None:
        self.call(self.runtime.stop_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def round_trips_and_transfer(api: httpx.Client, direct: DirectAgent) -> dict:
    """Exec round trips through the API and straight to the agent, alternating; then 16 MiB up and down."""
    session_id, _ = create_and_exec(api)
    for _ in range(WARM_UP_CALLS):
        api.post(f"/v1/sessions/{session_id}/exec", json={"command": "true"}).raise_for_status()
    through_api, to_agent = [], []
    for _ in range(ROUND_TRIPS):
        started = time.monotonic()
        api.post(f"/v1/sessions/{session_id}/exec", json={"command": "true"}).raise_for_status()
        through_api.append(time.monotonic() - started)
        to_agent.append(direct.exec_s())
    payload = os.urandom(16 * MIB)
    started = time.monotonic()
    api.post(f"/v1/sessions/{session_id}/upload", files={"file": ("bench.bin", payload)},
             data={"path": "/workspace/bench.bin"}).raise_for_status()
    upload_s = time.monotonic() - started
    started = time.monotonic()
    back = api.get(f"/v1/sessions/{session_id}/download", params={"path": "/workspace/bench.bin"})
    download_s = time.monotonic() - started
    back.raise_for_status()
    assert back.content == payload
    api.delete(f"/v1/sessions/{session_id}").raise_for_status()
    return {"exec_round_trip_ms": summary_ms(through_api), "agent_exec_round_trip_ms": summary_ms(to_agent),
            "upload_16mib_mb_s": round(16 * MIB / 1e6 / upload_s, 1),
            "download_16mib_mb_s": round(16 * MIB / 1e6 / download_s, 1),
            "agent_direct": direct.transfer()}


def idle_density(server: ServerProcess, api: httpx.Client, count: int, window: float = 30.0) -> dict:
    """`count` sessions held idle: host PSS, RSS and CPU per QEMU over `window` seconds."""
    ids = []
    started = time.monotonic()
    for _ in range(count):
        session_id, _ = create_and_exec(api)
        ids.append(session_id)
    fill_s = time.monotonic() - started
    time.sleep(10)  # a measurement window, not synchronisation: let the last starts settle
    pids = qemu_pids_under(server.home)
    before = {pid: cpu_ticks(pid) for pid in pids}
    began = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - began
    hz = os.sysconf("SC_CLK_TCK")
    cpu = [(cpu_ticks(pid) - before[pid]) / hz / elapsed * 100 for pid in pids]
    memory = [memory_kib(pid) for pid in pids]
    available = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemAvailable:"))
    for session_id in ids:
        api.delete(f"/v1/sessions/{session_id}").raise_for_status()
    return {"sessions": count, "qemu_processes": len(pids), "fill_s": round(fill_s, 1),
            "pss_mib_per_vm": round(statistics.mean(p for _, p in memory) / 1024, 1),
            "rss_mib_per_vm": round(statistics.mean(r for r, _ in memory) / 1024, 1),
            "cpu_percent_per_vm": round(statistics.mean(cpu), 3),
            "host_mem_available_gib": round(available / 1024 / 1024, 1)}


def run_mode(base: Path, pool_size: int, args: argparse.Namespace, direct: DirectAgent) -> dict:
    sessions = max(args.idle, args.burst) + pool_size
    server = ServerProcess(home=base / f"home-pool{pool_size}", config_file=base / f"config-pool{pool_size}.json",
                           extra_env=server_env(pool_size, sessions)).start(timeout=600)
    try:
        with server.client(timeout=600) as api:
            result: dict = {"pool_size": pool_size, "writable_quota_mib": WRITABLE_QUOTA_BYTES // MIB}
            result["create_to_first_exec_ms"] = sequential(server, api, args.creates, pool_size)
            result[f"burst_{args.burst}"] = burst(server, args.burst, pool_size)
            result.update(round_trips_and_transfer(api, direct))
            if not pool_size and args.idle:
                result[f"idle_{args.idle}"] = idle_density(server, api, args.idle)
            return result
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--creates", type=int, default=50)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--idle", type=int, default=100)
    parser.add_argument("--pool-size", type=int, default=20)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="chbench-", dir="/tmp"))
    direct = None
    try:
        home = base / "direct"
        home.mkdir()
        (home / "guest").symlink_to(Settings(home=Settings().home).guest_dir)
        direct = DirectAgent(home)
        pool_on = run_mode(base, args.pool_size, args, direct)
        pool_off = run_mode(base, 0, args, direct)
    finally:
        if direct is not None:
            direct.close()
        shutil.rmtree(base, ignore_errors=True)
    ratios = {}
    for name, mode in (("pool_on", pool_on), ("pool_off", pool_off)):
        rtt = mode["agent_exec_round_trip_ms"]["median"]
        ratios[name] = {
            "create_to_first_exec_over_rtt": round(mode["create_to_first_exec_ms"]["median"] / rtt, 2),
            "api_rtt_over_agent_rtt": round(mode["exec_round_trip_ms"]["median"] / rtt, 2),
        }
    print(json.dumps({"cores": os.cpu_count(), "pool_on": pool_on, "pool_off": pool_off, "ratios": ratios},
                     indent=2))


if __name__ == "__main__":
    main()
