"""The warm pool's correctness on real VMs (not its speed: bench/runtime.py): pooled
sessions share nothing, a pooled VM that died is never handed out and is replaced,
and a shutdown leaves nothing behind."""

from __future__ import annotations

import os
import signal

import pytest

from tests.integration.conftest import ServerProcess, qemu_pids_under
from tests.support.wait import wait_until

pytestmark = pytest.mark.vm


def run(api, sid: str, command: str) -> str:
    r = api.post(f"/v1/sessions/{sid}/exec", json={"command": command, "timeout_ms": 60_000})
    assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
    return str(r.json()["output"])


def boot_method(api, sid: str) -> str:
    events = api.get("/v1/audit/events", params={"resource_id": sid, "action": "session.created"}).json()
    return str(events["events"][0]["metadata"]["boot"])


def test_pooled_sessions_share_nothing_and_a_dead_pool_vm_is_replaced(tmp_path):
    srv = ServerProcess(home=tmp_path / "home", config_file=tmp_path / "config.json",
                        extra_env={"CHASER_WARM_POOL_SIZE": "2"}).start()
    try:
        with srv.client() as api:
            # The pool fills in the background (its log says when).
            wait_until(lambda: "warm pool: 2 of 2 ready" in srv.log(), 120, interval=0.2,
                       message="the warm pool never filled")
            sessions = [api.post("/v1/sessions", json={"ephemeral": True}).json()["id"] for _ in range(2)]
            assert [boot_method(api, sid) for sid in sessions] == ["pool", "pool"]
            # The pool's warm-up command left no trace in a session's process table.
            assert [api.get(f"/v1/sessions/{sid}/commands").json()["commands"] for sid in sessions] == [[], []]
            seen = [run(api, sid, "hostname; cat /etc/machine-id; head -c 16 /dev/urandom | od -An -tx1; "
                                  "echo $CHASER_SESSION_ID").split("\n")[:4] for sid in sessions]
            for column in range(4):
                assert seen[0][column] != seen[1][column], (column, seen)
            assert [row[3] for row in seen] == sessions

            # A pooled VM killed from outside leaves the pool at once and is replaced.
            wait_until(lambda: len(qemu_pids_under(srv.home)) >= 4, 120, interval=0.2,
                       message="the pool did not refill after two claims")
            pool_pids = sorted(qemu_pids_under(srv.home))
            victim = pool_pids[-1]  # the newest QEMU is a pool VM (the sessions' started first)
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: victim not in qemu_pids_under(srv.home) and len(qemu_pids_under(srv.home)) >= 4,
                       120, interval=0.2, message="the dead pool VM was not replaced")
            fresh = api.post("/v1/sessions", json={"ephemeral": True}).json()["id"]
            assert run(api, fresh, "echo alive").strip() == "alive"
            assert boot_method(api, fresh) == "pool"
    finally:
        srv.stop()
    # Shutdown: no QEMU, namespace or VM directory of this server is left.
    wait_until(lambda: not qemu_pids_under(srv.home), 30, interval=0.2, message="a QEMU outlived the server")
    assert not any((srv.home / "vms").iterdir())
