"""Isolation through a real server: every sandbox on its own network namespace,
the egress policy, the jailed QEMU, cleanup after SIGKILL and admission.

The "internet" and the private service are test namespaces (tests/integration/
testnet.py); the sandboxes' resolver forwards to the test DNS server there.
No test sends a packet off this machine."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import ServerProcess, qemu_pids_under
from tests.integration.testnet import DNS_ADDRESS, INTERNET_NET, PRIVATE_NET, LabNetwork
from tests.support.wait import wait_until

pytestmark = pytest.mark.vm

# Runs inside a guest: try each host:port and say open / refused / timeout.
PROBE = r"""
import json, socket, sys
result = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((host, int(port))); result[target] = "open"
    except ConnectionRefusedError:
        result[target] = "refused"
    except socket.timeout:
        result[target] = "timeout"
    except OSError as exc:
        result[target] = f"error {exc.errno}"
    finally:
        s.close()
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def testnet():
    network = LabNetwork().start()
    yield network
    network.stop()


@pytest.fixture(scope="module")
def canaries():
    """TCP services on the host that no sandbox may reach: one on 127.0.0.1, one on 0.0.0.0."""
    listeners = []
    for address in ("127.0.0.1", "0.0.0.0"):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, 0))
        sock.listen(16)
        listeners.append(sock)
    stop = threading.Event()

    def accept(sock):
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
                conn.close()
            except OSError:
                pass

    threads = [threading.Thread(target=accept, args=(s,), daemon=True) for s in listeners]
    for thread in threads:
        thread.start()
    yield [s.getsockname()[1] for s in listeners]
    stop.set()
    for thread in threads:
        thread.join(2)
    for sock in listeners:
        sock.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, testnet):
    base = tmp_path_factory.mktemp("isolation")
    srv = ServerProcess(home=base / "home", config_file=base / "config.json", extra_env={
        "CHASER_NETWORK": "isolated",
        "CHASER_NETWORK_DNS_SERVERS": json.dumps([DNS_ADDRESS]),
        "CHASER_WARM_POOL_SIZE": "0",
    }).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def http(server):
    with server.client() as client:
        yield client


def create(http, **body) -> str:
    response = http.post("/v1/sessions", json={"session_type": "sandbox", "ephemeral": True, **body})
    assert response.status_code == 201, response.text  # 201: a session was started (200: a workspace's, reused)
    assert response.json()["status"] == "running"
    return response.json()["id"]


def run(http, session_id: str, command: str, timeout_ms: int = 60_000) -> dict:
    response = http.post(f"/v1/sessions/{session_id}/exec", json={"command": command, "timeout_ms": timeout_ms})
    assert response.status_code == 200, response.text
    return response.json()


def probe(http, session_id: str, targets: list[str]) -> dict[str, str]:
    script = base64.b64encode(PROBE.encode()).decode()
    result = run(http, session_id, f"python3 -c \"$(echo {script} | base64 -d)\" {' '.join(targets)}")
    assert result["exit_code"] == 0, result
    return json.loads(result["output"])


def fetch(http, session_id: str, url: str) -> str:
    """What curl in the guest got (empty when the connection failed)."""
    return run(http, session_id, f"curl -s -m 5 {url}")["output"]


def host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines()]


def terminate(http, session_id: str) -> None:
    http.delete(f"/v1/sessions/{session_id}", params={"force": "true"})


@pytest.fixture(scope="module")
def sandbox(http):
    session_id = create(http)
    yield session_id
    terminate(http, session_id)


def test_internet_host_reachable_by_name_and_ip(http, sandbox, testnet):
    testnet.check_routes()
    assert fetch(http, sandbox, f"http://{INTERNET_NET}.10/") == f"hello from {INTERNET_NET}.10"
    assert fetch(http, sandbox, "http://allowed.test/") == f"hello from {INTERNET_NET}.10"


def test_host_private_hosts_and_other_sandboxes_are_unreachable(http, server, sandbox, testnet, canaries):
    testnet.check_routes()
    other = create(http)
    try:
        started = run(http, other, "nohup python3 -m http.server 3000 >/dev/null 2>&1 &")
        assert started["exit_code"] == 0
        # The other sandbox listens (checked from inside it), so a refusal below is the fence.
        wait_until(lambda: probe(http, other, ["127.0.0.1:3000"])["127.0.0.1:3000"] == "open", 30, interval=0.2,
                   message="the other sandbox's server did not start")
        loopback_canary, any_canary = canaries
        targets = [f"10.0.2.2:{server.port}", f"10.0.2.2:{any_canary}", f"127.0.0.1:{loopback_canary}",
                   f"{PRIVATE_NET}.10:80"]
        for address in host_addresses():
            targets += [f"{address}:{server.port}", f"{address}:{any_canary}", f"{address}:{loopback_canary}"]
        # Every sandbox namespace's address: the other sandbox's agent and its server.
        for address in host_addresses():
            if address.startswith("10.200."):
                peer = address.rsplit(".", 1)[0] + "." + str(int(address.rsplit(".", 1)[1]) + 1)
                targets += [f"{peer}:8420", f"{peer}:3000"]
        started_at = time.monotonic()
        result = probe(http, sandbox, targets)
        assert time.monotonic() - started_at < 60
        reachable = {target: state for target, state in result.items() if state == "open"}
        assert not reachable, f"reachable from a sandbox: {reachable}"
        # ...while the test internet still works from the same sandbox.
        assert probe(http, sandbox, [f"{INTERNET_NET}.10:80"]) == {f"{INTERNET_NET}.10:80": "open"}
    finally:
        terminate(http, other)


def test_no_internet_leaves_only_the_agent(http, testnet):
    testnet.check_routes()
    session_id = create(http, network={"internet": False})
    try:
        assert run(http, session_id, "echo agent works")["output"] == "agent works\n"
        assert probe(http, session_id, [f"{INTERNET_NET}.10:80"])[f"{INTERNET_NET}.10:80"] != "open"
        policy = http.get(f"/v1/sessions/{session_id}/network").json()
        assert policy["internet"] is False
    finally:
        terminate(http, session_id)


def test_allow_list_lets_only_allowed_names_connect(http, testnet):
    testnet.check_routes()
    session_id = create(http, network={"allow_out": ["*.allowed.test"]})
    try:
        assert fetch(http, session_id, "http://allowed.test/") == f"hello from {INTERNET_NET}.10"
        assert fetch(http, session_id, "http://www.allowed.test/") == f"hello from {INTERNET_NET}.12"
        # other.test resolves, but its address was never resolved for an allowed name.
        assert fetch(http, session_id, "http://other.test/") == ""
        result = probe(http, session_id, [f"{INTERNET_NET}.13:80", f"{DNS_ADDRESS}:53"])
        assert result == {f"{INTERNET_NET}.13:80": "refused", f"{DNS_ADDRESS}:53": "refused"}  # no other resolver
    finally:
        terminate(http, session_id)


def test_deny_list_blocks_the_name_and_cidr_and_changes_apply_at_once(http, testnet):
    testnet.check_routes()
    session_id = create(http, network={"deny_out": ["denied.test", f"{INTERNET_NET}.13/32"]})
    try:
        assert fetch(http, session_id, "http://allowed.test/") == f"hello from {INTERNET_NET}.10"
        assert fetch(http, session_id, "http://denied.test/") == ""
        assert fetch(http, session_id, "http://other.test/") == ""
        changed = http.put(f"/v1/sessions/{session_id}/network", json={"internet": False})
        assert changed.status_code == 200, changed.text
        assert fetch(http, session_id, "http://allowed.test/") == ""
        http.put(f"/v1/sessions/{session_id}/network", json={"internet": True})
        assert fetch(http, session_id, "http://other.test/") == f"hello from {INTERNET_NET}.13"
    finally:
        terminate(http, session_id)


def qemu_pid(server: ServerProcess) -> int:
    pids = qemu_pids_under(server.home)
    assert pids, "no QEMU of this server runs"
    return pids[0]


def proc_status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)


def test_qemu_is_jailed(http, server, sandbox):
    other = create(http)
    try:
        uids = {proc_status(pid)["Uid"].split()[0] for pid in qemu_pids_under(server.home)}
        assert len(uids) == 2 and "0" not in uids, f"QEMU uids {uids}: not unprivileged and distinct"
    finally:
        terminate(http, other)
    pid = qemu_pid(server)
    status = proc_status(pid)
    assert status["Uid"].split() == [status["Uid"].split()[0]] * 4 and status["Uid"].split()[0] != "0"
    assert status["CapEff"].strip() == "0000000000000000"
    assert status["Seccomp"].strip() == "2"
    cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    assert "/chaser/vm-" in cgroups
    memory_group = next(line.split(":", 2)[2] for line in cgroups.splitlines()
                        if line.split(":")[1] in ("memory", ""))
    root = Path("/sys/fs/cgroup/memory") if Path("/sys/fs/cgroup/memory").is_dir() else Path("/sys/fs/cgroup")
    limit_file = "memory.limit_in_bytes" if root.name == "memory" else "memory.max"
    limit = int((root / memory_group.lstrip("/") / limit_file).read_text())
    assert 512 * 2**20 < limit < 2 * 2**30
    netns = os.readlink(f"/proc/{pid}/ns/net")
    assert netns != os.readlink("/proc/self/ns/net"), "QEMU runs in the host's network namespace"


def test_memory_hog_and_fork_bomb_stay_inside(http, sandbox):
    other, bomber = create(http), create(http)
    try:
        def round_trips(count: int = 11) -> float:
            times = []
            for _ in range(count):
                started = time.monotonic()
                run(http, other, "true")
                times.append(time.monotonic() - started)
            return statistics.median(times)

        normal = round_trips()
        hog = run(http, sandbox, "python3 -c 'b = bytearray(3 * 1024**3)'; echo done", timeout_ms=120_000)
        assert "done" in hog["output"]
        assert run(http, sandbox, "echo alive")["output"] == "alive\n"
        bomb = run(http, bomber, "(sh -c 'b() { b | b & }; b' >/dev/null 2>&1 &) ; echo started")
        assert bomb["output"] == "started\n"
        loaded = round_trips()
        assert loaded <= 2 * normal, f"exec round trip {normal * 1000:.0f} ms normally, {loaded * 1000:.0f} ms beside a fork bomb"
        assert http.get("/health").status_code == 200
    finally:
        terminate(http, bomber)  # the whole VM goes, bomb and all
        terminate(http, other)


def process_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def namespaces() -> set[str]:
    netns = Path("/run/netns")
    return {entry.name for entry in netns.iterdir() if entry.name.startswith("chaser-")} if netns.is_dir() else set()


def host_veths() -> set[str]:
    return {name for name in os.listdir("/sys/class/net") if name.startswith("chv")}


def test_sigkill_restart_keeps_namespaces_and_a_stop_leaves_nothing(tmp_path, testnet):
    before_ns, before_veth = namespaces(), host_veths()
    env = {"CHASER_NETWORK": "isolated", "CHASER_WARM_POOL_SIZE": "0", "CHASER_NETWORK_READY_POOL_SIZE": "0"}
    srv = ServerProcess(home=tmp_path / "home", config_file=tmp_path / "config.json", extra_env=env).start()
    try:
        with srv.client() as http:
            for _ in range(3):
                create(http)
        ours_ns, ours_veth = namespaces() - before_ns, host_veths() - before_veth
        pids = qemu_pids_under(srv.home)
        assert len(ours_ns) == 3 and len(ours_veth) == 3 and len(pids) == 3
        srv.kill(signal.SIGKILL, group=False)  # the server alone: its VMs run on, the next server adopts them
        restarted = ServerProcess(home=srv.home, config_file=srv.config_file, port=srv.port, extra_env=env).start()
        try:
            assert ours_ns <= namespaces() and ours_veth <= host_veths(), "an adopted VM's namespace was removed"
            assert sorted(qemu_pids_under(srv.home)) == sorted(pids)
        finally:
            restarted.stop()  # SIGTERM: the VMs are stopped, their namespaces removed
        assert not (ours_ns & namespaces()), "a namespace is left"
        assert not (ours_veth & host_veths()), "a veth is left"
        # A zombie waiting for PID 1 to reap it is dead.
        wait_until(lambda: not any(process_running(pid) for pid in pids), 15,
                   message=f"QEMUs still run (of {pids})")
    finally:
        srv.stop()


def test_admission_refuses_a_third_session(tmp_path):
    env = {"CHASER_MAX_SESSIONS": "2", "CHASER_WARM_POOL_SIZE": "0", "CHASER_NETWORK_READY_POOL_SIZE": "0"}
    srv = ServerProcess(home=tmp_path / "home", config_file=tmp_path / "config.json", extra_env=env).start()
    try:
        with srv.client() as http:
            first, second = create(http), create(http)
            vm_dirs = set(os.listdir(srv.home / "vms"))
            before_ns = namespaces()
            refused = http.post("/v1/sessions", json={"session_type": "sandbox", "ephemeral": True})
            assert refused.status_code == 503, refused.text
            assert refused.json()["code"] == "capacity_exhausted"
            assert int(refused.headers["Retry-After"]) > 0
            assert set(os.listdir(srv.home / "vms")) == vm_dirs
            assert namespaces() <= before_ns
            assert len(qemu_pids_under(srv.home)) == 2
            listed = http.get("/v1/sessions", params={"status": "all"}).json()["sessions"]
            assert {s["id"] for s in listed} == {first, second}
            terminate(http, first)
            assert http.post("/v1/sessions", json={"session_type": "sandbox", "ephemeral": True}).status_code == 201
    finally:
        srv.stop()


def test_network_none_leaves_only_the_agent_channel(tmp_path, testnet, canaries):
    """What a server without CAP_NET_ADMIN gives: slirp restrict=on, nothing but the agent."""
    testnet.check_routes()
    env = {"CHASER_NETWORK": "none", "CHASER_WARM_POOL_SIZE": "0"}
    srv = ServerProcess(home=tmp_path / "home", config_file=tmp_path / "config.json", extra_env=env).start()
    try:
        assert "sandboxes get no network beyond the agent channel" in srv.log()
        with srv.client() as http:
            session_id = create(http)
            _loopback_canary, any_canary = canaries
            targets = [f"10.0.2.2:{srv.port}", f"10.0.2.2:{any_canary}", f"{INTERNET_NET}.10:80", f"{PRIVATE_NET}.10:80"]
            result = probe(http, session_id, targets)
            assert not [t for t, state in result.items() if state == "open"], result
            policy = http.get(f"/v1/sessions/{session_id}/network").json()
            assert policy["enforced"] is False
            refused = http.put(f"/v1/sessions/{session_id}/network", json={"internet": True})
            assert refused.status_code == 400 and refused.json()["code"] == "network_unavailable"
            terminate(http, session_id)
    finally:
        srv.stop()


def test_a_vm_over_its_memory_limit_ends_as_vm_oom(tmp_path):
    """With no allowance beyond guest RAM, a guest that fills its RAM pushes its
    QEMU over the cgroup limit: that session fails with vm_oom, the other runs on."""
    env = {"CHASER_VM_MEMORY_OVERHEAD_MIB": "0", "CHASER_WARM_POOL_SIZE": "0"}
    srv = ServerProcess(home=tmp_path / "home", config_file=tmp_path / "config.json", extra_env=env).start()
    try:
        with srv.client() as http:
            victim, bystander = create(http), create(http)
            hog = http.post(f"/v1/sessions/{victim}/exec", json={
                "command": "python3 -c \"b = b'x' * (460 * 1024**2); input()\"", "timeout_ms": 120_000})
            assert hog.status_code in (409, 503), hog.text  # the VM died under the request
            row = wait_until(lambda: (found := http.get(f"/v1/sessions/{victim}").json())["status"] == "failed"
                             and found, 30, interval=0.2, message="the victim's session did not fail")
            assert row["end_reason"] == "vm_oom", row
            assert run(http, bystander, "echo still here")["output"] == "still here\n"
            assert http.get("/health").status_code == 200
    finally:
        srv.stop()
