"""Nodes across processes: two real server processes (tests/support/fake_server.py: the whole app over the
fake runtime) on one PostgreSQL (tests/support/postgres.py). Each sees both nodes; a second server's start
leaves the first's sessions alone; SIGKILL one and the other fails its sessions (`node_lost`) within
CHASER_NODE_LOST_AFTER_S and a heartbeat; restarted on its home it is the same node, active again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import REPO, ServerProcess
from tests.support.harness import TEST_RATE_LIMIT_PER_MINUTE
from tests.support.net import free_port
from tests.support.wait import wait_until

HEARTBEAT_S = 0.5
LOST_AFTER_S = 3.0


@dataclass
class FakeServerProcess:
    home: Path
    database_url: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeServerProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CHASER_HOME": str(self.home), "CHASER_CONFIG": str(self.home / "config.json"),
               "CHASER_DATABASE_URL": self.database_url, "CHASER_NODE_HEARTBEAT_S": str(HEARTBEAT_S),
               "CHASER_NODE_LOST_AFTER_S": str(LOST_AFTER_S), "CHASER_E2B_INGRESS_PORT": "0",
               "CHASER_RATE_LIMIT_PER_MINUTE": str(TEST_RATE_LIMIT_PER_MINUTE), "PYTHONUNBUFFERED": "1"}
        log = (self.home / f"server-{self.port}-{time.monotonic_ns()}.log").open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "tests.support.fake_server", str(self.port)],
                                        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()}")
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200

        wait_until(ready, 60, interval=0.1, ignore=(httpx.HTTPError,), message="the server is ready")
        return self

    def log(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-3000:] for path in sorted(self.home.glob("server-*.log")))

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(30)

    @property
    def admin_key(self) -> str:
        return (self.home / "admin-key").read_text()


def check(response: httpx.Response, status: int | None = None) -> Any:
    assert response.is_success if status is None else response.status_code == status, response.text
    return response.json()


def nodes_of(http: httpx.Client) -> dict[str, dict[str, Any]]:
    return {node["id"]: node for node in check(http.get("/v1/nodes"))["nodes"]}


def test_two_servers_are_two_nodes_and_a_killed_one_loses_its_sessions(postgres, tmp_path):
    url = postgres.create_database()
    first = FakeServerProcess(tmp_path / "first", url).start()
    second = None
    try:
        with first.client(first.admin_key) as a:
            check(a.post("/v1/workspaces", json={"name": "dev"}))
            kept = check(a.post("/v1/sessions", json={"workspace": "dev"}), 201)
            second = FakeServerProcess(tmp_path / "second", url).start()
            first_id = (first.home / "node-id").read_text().strip()
            second_id = (second.home / "node-id").read_text().strip()
            # The second server's start-up recovery left the first's session alone.
            assert check(a.get(f"/v1/sessions/{kept['id']}"))["status"] == "running"
            assert kept["node_id"] == first_id
            with second.client(second.admin_key) as b:
                for http, me in ((a, first_id), (b, second_id)):
                    nodes = nodes_of(http)
                    assert set(nodes) == {first_id, second_id}
                    assert [node_id for node_id, node in nodes.items() if node["current"]] == [me]
                    assert all(node["status"] == "active" and not node["lost"] for node in nodes.values())
                doomed = check(b.post("/v1/sessions", json={"ephemeral": True}), 201)
                assert doomed["node_id"] == second_id
                assert nodes_of(a)[first_id]["sessions_running"] == 1
                assert nodes_of(a)[second_id]["sessions_running"] == 1
                # Cordon through one server, refused on the other (it is that one's node).
                check(a.post(f"/v1/nodes/{second_id}/cordon"))
                refused = b.post("/v1/sessions", json={"ephemeral": True})
                assert refused.status_code == 503 and refused.json()["code"] == "node_cordoned"
                check(a.post(f"/v1/nodes/{second_id}/uncordon"))

            second.kill()
            killed = time.monotonic()

            def failed() -> dict[str, Any] | None:
                row = check(a.get(f"/v1/sessions/{doomed['id']}"))
                return row if row["status"] == "failed" else None

            row = wait_until(failed, LOST_AFTER_S + HEARTBEAT_S + 10, interval=0.1, message="node_lost")
            took = time.monotonic() - killed
            print(f"node_lost seen {took:.2f} s after the SIGKILL (lost after {LOST_AFTER_S} s, heartbeat {HEARTBEAT_S} s)")
            assert row["end_reason"] == "node_lost"
            assert took <= LOST_AFTER_S + 2 * HEARTBEAT_S + 1.0, took  # a heartbeat late at most, and the poll
            assert nodes_of(a)[second_id]["lost"] and not nodes_of(a)[first_id]["lost"]
            assert check(a.get(f"/v1/sessions/{kept['id']}"))["status"] == "running"  # the survivor's own

            second = FakeServerProcess(tmp_path / "second", url).start()  # the same home: the same node
            assert (second.home / "node-id").read_text().strip() == second_id
            back = wait_until(lambda: (node := nodes_of(a)[second_id]) and not node["lost"] and node, 10,
                              interval=0.1, message="the node is back")
            assert back["status"] == "active" and back["sessions_running"] == 0
            assert check(a.get(f"/v1/sessions/{doomed['id']}"))["end_reason"] == "node_lost"  # stays ended
            assert check(a.get(f"/v1/sessions/{kept['id']}"))["status"] == "running"  # its start left it
            ran = check(a.post(f"/v1/sessions/{kept['id']}/exec", json={"command": "echo still here"}))
            assert ran["exit_code"] == 0
    except BaseException:
        print(first.log(), second.log() if second else "")
        raise
    finally:
        for server in (first, second):
            if server is not None:
                server.kill(signal.SIGTERM)


@pytest.mark.vm
def test_a_real_server_registers_its_capacity_and_its_sessions_carry_its_node(postgres, tmp_path):
    """QEMU on this machine: the node's capacity is admission's (chaser/vm/admission.py), a VM's session
    names the node, /readyz is ready once the runtime prepared the host."""
    from chaser.config import Settings
    from chaser.vm.admission import Admission

    server = ServerProcess(home=tmp_path / "home", config_file=tmp_path / "config.json",
                           extra_env={"CHASER_DATABASE_URL": postgres.create_database()}).start()
    try:
        assert httpx.get(f"{server.url}/readyz", timeout=10).json() == {"status": "ready"}
        with server.client() as http:
            [node] = check(http.get("/v1/nodes"))["nodes"]
            limits = Admission(Settings(home=server.home)).limits
            assert node["capacity"]["sessions"] == limits.max_sessions
            assert node["capacity"]["memory_mib"] == limits.host_memory_total_mib - limits.memory_reserve_mib
            assert node["capacity"]["vcpus"] == os.cpu_count() and node["current"]
            session = check(http.post("/v1/sessions", json={"ephemeral": True}), 201)
            assert session["node_id"] == node["id"] == (server.home / "node-id").read_text().strip()
            assert check(http.get(f"/v1/nodes/{node['id']}"))["sessions_running"] == 1
            check(http.delete(f"/v1/sessions/{session['id']}"))
    finally:
        server.stop()
