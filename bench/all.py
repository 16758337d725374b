"""Every benchmark in one JSON document (`make bench`; docs/performance.md).

Runs each script in bench/ as its own process (each starts what it needs and
removes what it made), then sets the figures of docs/performance.md's targets
table beside their targets: ratios to the exec round trip of the same run, the
pool on and off side by side, and the machine's core count.

    .venv/bin/python bench/all.py [--quick]

`--quick` runs every script with small counts (a smoke run, not figures to quote).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

# script → (arguments for the figures, arguments for --quick)
SCRIPTS = {
    "runtime": (["--restores", "20", "--idle-vms", "3"], ["--restores", "3", "--idle-vms", "2"]),
    "startup": (["--creates", "50", "--burst", "20", "--idle", "100", "--pool-size", "20"],
                ["--creates", "3", "--burst", "3", "--idle", "3", "--pool-size", "3"]),
    "breakdown": (["--rounds", "8"], ["--rounds", "2"]),
    "interactive": ([], ["--keystrokes", "10", "--requests", "5", "--mib", "1"]),
    "network": ([], ["--restores", "2", "--idle-vms", "1", "--megabytes", "8"]),
    "pause": ([], ["--rounds", "1"]),
    "scaleout": ([], ["--creates", "3", "--round-trips", "5", "--move-mib", "8"]),
}


def run(name: str, arguments: list[str]) -> dict:
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *arguments], cwd=ROOT,
                          stdout=subprocess.PIPE, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench/{name}.py failed with exit code {done.returncode}")
    result = json.loads(done.stdout)
    result["bench_wall_s"] = round(time.monotonic() - started, 1)
    return result


def target(value: float, limit: float, *, at_most: bool = True) -> dict:
    return {"value": value, "target": f"{'<=' if at_most else '>='} {limit}",
            "met": value <= limit if at_most else value >= limit}


def targets(runtime: dict, startup: dict) -> dict:
    """The issue's table: start times as multiples of the exec round trip (RTT) of the same run."""
    rtt = runtime["exec_round_trip_ms"]["median"]
    on, off = startup["pool_on"], startup["pool_off"]
    idle = next(value for key, value in off.items() if key.startswith("idle_"))
    burst_key = next(key for key in on if key.startswith("burst_"))
    return {
        "runtime_warm_pool_to_first_exec_over_rtt": target(
            round(runtime["warm_pool_start_to_first_exec_ms"]["median"] / rtt, 2), 1.5),
        "runtime_restore_to_first_exec_over_rtt": target(
            round(runtime["restore_to_first_exec_ms"]["median"] / rtt, 2), 4),
        "api_pool_on_create_to_first_exec_over_rtt": target(
            startup["ratios"]["pool_on"]["create_to_first_exec_over_rtt"], 1.5),
        "api_pool_off_create_to_first_exec_over_rtt": target(
            startup["ratios"]["pool_off"]["create_to_first_exec_over_rtt"], 4),
        "p95_over_median_pool_on": target(on["create_to_first_exec_ms"]["p95_over_median"], 1.5),
        "p95_over_median_pool_off": target(off["create_to_first_exec_ms"]["p95_over_median"], 1.5),
        f"{burst_key}_all_done_s_pool_on": target(on[burst_key]["all_done_s"], 5),
        f"{burst_key}_all_done_s_pool_off": target(off[burst_key]["all_done_s"], 5),
        f"idle_{idle['sessions']}_pss_mib_per_vm": target(idle["pss_mib_per_vm"], 48),
        f"idle_{idle['sessions']}_cpu_percent_per_vm": target(idle["cpu_percent_per_vm"], 0.5),
        "api_rtt_over_agent_rtt": target(startup["ratios"]["pool_off"]["api_rtt_over_agent_rtt"], 1.3),
        "upload_16mib_mb_s": target(off["upload_16mib_mb_s"], 50, at_most=False),
        "download_16mib_mb_s": target(off["download_16mib_mb_s"], 50, at_most=False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", choices=sorted(SCRIPTS), help="run just these scripts")
    args = parser.parse_args()
    names = args.only or list(SCRIPTS)
    document: dict = {"cores": os.cpu_count(), "machine": platform.machine(), "kernel": platform.release(),
                      "quick": args.quick}
    for name in names:
        full, quick = SCRIPTS[name]
        print(f"bench/{name}.py …", file=sys.stderr, flush=True)
        document[name] = run(name, quick if args.quick else full)
    if "runtime" in document and "startup" in document:
        document["accel"] = document["runtime"]["accel"]
        document["targets"] = targets(document["runtime"], document["startup"])
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
