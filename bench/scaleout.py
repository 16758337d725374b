"""Scale-out benchmark (docs/performance.md, "Scale-out"): `--creates` sessions created at once,
each with one exec, through an API replica in front of one `chaser node`, then of two (sessions
per second, and where they landed); and the exec round trip through a replica to a node on
another address against a single `chaser server` process (the ratio); and a workspace's move
between the nodes (`--move-mib` of data, there and back: seconds, MB/s streamed).

    .venv/bin/python bench/scaleout.py [--creates 20] [--round-trips 50] [--move-mib 256]

Starts its own PostgreSQL (tests/support/postgres.py), nodes on 127.0.0.2 and 127.0.0.3 and a
replica on 127.0.0.1 (tests/support/cluster.py), and a single-process server; prints one JSON
document and stops and removes everything it made. Both nodes share this machine: the two-node
figure shows what routing and placement cost and spread, not more cores.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.runtime import percentile
from tests.integration.conftest import ServerProcess, qemu_pids_under
from tests.support.cluster import Cluster
from tests.support.postgres import PostgresServer

WARM_UP_CALLS = 10
MIB = 1024 * 1024
# Admission charges each VM its disk quota and worst-case memory: 20 at once on one node takes a
# smaller quota and session limits above the burst (as bench/startup.py does).
def node_env(sessions: int) -> dict[str, str]:
    return {"CHASER_MAX_SESSIONS": str(sessions + 5), "CHASER_MAX_SESSIONS_PER_ACCOUNT": str(sessions + 5),
            "CHASER_WRITABLE_SIZE_BYTES": str(512 * MIB), "CHASER_SESSION_IDLE_TIMEOUT_S": "3600"}


def summary_ms(values: list[float]) -> dict:
    return {"median": round(statistics.median(values) * 1000, 1), "p95": round(percentile(values, 0.95) * 1000, 1),
            "n": len(values)}


def create_and_exec(api: httpx.Client) -> tuple[dict, float]:
    started = time.monotonic()
    created = api.post("/v1/sessions", json={"ephemeral": True})
    if created.is_error:
        raise RuntimeError(f"create: {created.status_code} {created.text}")
    session = created.json()
    ran = api.post(f"/v1/sessions/{session['id']}/exec", json={"command": "true"})
    ran.raise_for_status()
    if ran.json().get("exit_code") != 0:
        raise RuntimeError(f"exec: {ran.text}")
    return session, time.monotonic() - started


def burst(api: httpx.Client, count: int) -> dict:
    """`count` creates + exec at once; every session is deleted afterwards (not timed)."""
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        results = list(pool.map(lambda _: create_and_exec(api), range(count)))
    wall = time.monotonic() - started
    for session, _ in results:
        api.delete(f"/v1/sessions/{session['id']}").raise_for_status()
    per_node: dict[str, int] = {}
    for session, _ in results:
        per_node[session["node_id"]] = per_node.get(session["node_id"], 0) + 1
    return {"sessions": count, "wall_s": round(wall, 2), "sessions_per_s": round(count / wall, 2),
            "create_to_first_exec_ms": summary_ms([seconds for _, seconds in results]),
            "per_node": sorted(per_node.values(), reverse=True)}


def round_trips(api: httpx.Client, count: int) -> dict:
    session, _ = create_and_exec(api)
    try:
        for _ in range(WARM_UP_CALLS):
            api.post(f"/v1/sessions/{session['id']}/exec", json={"command": "true"}).raise_for_status()
        times = []
        for _ in range(count):
            started = time.monotonic()
            api.post(f"/v1/sessions/{session['id']}/exec", json={"command": "true"}).raise_for_status()
            times.append(time.monotonic() - started)
    finally:
        api.delete(f"/v1/sessions/{session['id']}").raise_for_status()
    return summary_ms(times)


def warm_up(api: httpx.Client) -> None:
    """One session on the node first: its first VM also builds its template (not what is measured)."""
    session, _ = create_and_exec(api)
    api.delete(f"/v1/sessions/{session['id']}").raise_for_status()


def workspace_move(api: httpx.Client, mib: int) -> dict:
    """A workspace holding `mib` MiB of random data (plus its ext4) moved to the other node and back."""
    workspace = api.post("/v1/workspaces", json={"name": "bench-move"})
    workspace.raise_for_status()
    try:
        session = api.post("/v1/sessions", json={"workspace": "bench-move"})
        session.raise_for_status()
        sid, origin = session.json()["id"], session.json()["node_id"]
        command = f"head -c {mib * MIB} /dev/urandom > /workspace/data && sync"
        api.post(f"/v1/sessions/{sid}/exec", json={"command": command, "timeout_ms": 600_000}).raise_for_status()
        api.delete(f"/v1/sessions/{sid}").raise_for_status()
        other = next(node["id"] for node in api.get("/v1/nodes").json()["nodes"] if node["id"] != origin)
        moves = []
        for target in (other, origin):
            started = time.monotonic()
            moved = api.post("/v1/workspaces/bench-move/move", json={"node_id": target})
            moved.raise_for_status()
            moves.append((moved.json(), time.monotonic() - started))
    finally:
        api.delete("/v1/workspaces/bench-move", params={"force": "true"})
    result = moves[0][0]
    return {"data_mib": mib, "files": result["files"], "bytes_streamed": result["bytes"],
            "seconds": [round(wall, 2) for _, wall in moves],
            "mb_per_s": [round(moved["bytes"] / 1e6 / wall, 1) for moved, wall in moves]}


def through_replica(base: Path, postgres: PostgresServer, creates: int, trips: int, move_mib: int) -> dict:
    cluster = Cluster(base=base / "cluster", database_url=postgres.create_database())
    try:
        first = cluster.add_node("127.0.0.2", **node_env(creates))
        replica = cluster.add_replica()
        with cluster.client(replica) as api:
            warm_up(api)
            one_node = burst(api, creates)
            rtt = round_trips(api, trips)
            cluster.add_node("127.0.0.3", **node_env(creates))
            first_id = next(node["id"] for node in api.get("/v1/nodes").json()["nodes"]
                            if node["advertise_url"] == first.url)
            api.post(f"/v1/nodes/{first_id}/cordon").raise_for_status()  # the warm-up goes to the new node
            try:
                warm_up(api)
            finally:
                api.post(f"/v1/nodes/{first_id}/uncordon").raise_for_status()
            two_nodes = burst(api, creates)
            move = workspace_move(api, move_mib)
    finally:
        cluster.stop()
    for node in cluster.nodes:
        if qemu_pids_under(node.home):
            raise RuntimeError(f"QEMU left behind under {node.home}")
    return {"one_node": one_node, "two_nodes": two_nodes, "exec_round_trip_ms": rtt, "workspace_move": move}


def single_process(base: Path, trips: int) -> dict:
    server = ServerProcess(home=base / "single", config_file=base / "single.json",
                           extra_env={**node_env(1), "CHASER_WARM_POOL_SIZE": "0"})  # as the cluster's nodes
    try:
        server.start()
        with server.client() as api:
            warm_up(api)
            return round_trips(api, trips)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=20)
    parser.add_argument("--round-trips", type=int, default=50)
    parser.add_argument("--move-mib", type=int, default=256, help="data in the workspace that is moved")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="chaser-bench-scaleout-"))
    postgres = PostgresServer()
    try:
        postgres.start()
        cluster = through_replica(base, postgres, args.creates, args.round_trips, args.move_mib)
        single = single_process(base, args.round_trips)
    finally:
        postgres.stop()
        shutil.rmtree(base, ignore_errors=True)
    one, two = cluster["one_node"], cluster["two_nodes"]
    print(json.dumps({
        "cores": os.cpu_count(), "pool": 0, "creates_at_once": args.creates,
        "one_node": one, "two_nodes": two,
        "two_over_one_node_sessions_per_s": round(two["sessions_per_s"] / one["sessions_per_s"], 2),
        "exec_round_trip_ms": {"replica_to_node": cluster["exec_round_trip_ms"], "single_process": single},
        "replica_over_single_exec_rtt": round(cluster["exec_round_trip_ms"]["median"] / single["median"], 2),
        "workspace_move": cluster["workspace_move"],
        "note": "both nodes run on this machine's cores (TCG here): two nodes spread the sessions but add no "
                "CPU, so the two-node rate shows routing and placement, not more capacity",
    }, indent=2))


if __name__ == "__main__":
    main()
