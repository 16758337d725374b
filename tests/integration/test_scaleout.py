"""Scale-out end to end (tests/support/cluster.py): one PostgreSQL of our own, two `chaser node`
processes with their own data dirs advertising 127.0.0.2 and 127.0.0.3, two stateless API replicas
(`chaser server`, CHASER_LOCAL_RUNTIME=false) on 127.0.0.1. Real microVMs (TCG here), real HTTP,
WebSockets, SSE, the `chaser` CLI and the official MCP SDK — through either replica to either node.

One cluster for the module (booting nodes is the slow part); a test that kills a process restarts
it before it ends. The lost-node test comes last: the node it kills takes its sessions with it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.support.cluster import NODE_TOKEN, Cluster, Process, qemu_pids_under
from tests.support.net import free_port
from tests.support.servers import SANDBOX_SERVERS
from tests.support.wait import wait_until

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
CHASER = [sys.executable, "-m", "chaser.cli.main"]
# Lost after 15 s: a node restart (4-8 s here) stays well inside it; the issue's bound is 30 s.
HEARTBEAT_S, LOST_AFTER_S = 0.5, 15.0
HTTP_PORT, WS_PORT, TCP_PORT = 8000, 8003, 8004


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, postgres):
    base = Path(tmp_path_factory.mktemp("scaleout"))
    cluster = Cluster(base=base, database_url=postgres.create_database(), common_env={
        "CHASER_NODE_HEARTBEAT_S": str(HEARTBEAT_S), "CHASER_NODE_LOST_AFTER_S": str(LOST_AFTER_S),
        "CHASER_BASE_DOMAIN": "localhost"})
    try:
        cluster.add_node("127.0.0.2")
        cluster.add_node("127.0.0.3")
        cluster.add_replica()
        cluster.add_replica()
        yield cluster
    finally:
        cluster.stop()
    for node in cluster.nodes:
        wait_until(lambda node=node: not qemu_pids_under(node.home), 30, interval=0.2, message="QEMU left behind")


@pytest.fixture(scope="module")
def apis(cluster):
    clients = [cluster.client(replica) for replica in cluster.replicas]
    yield clients
    for client in clients:
        client.close()


def node_ids(cluster: Cluster, api: httpx.Client) -> dict[str, str]:
    """host (127.0.0.x) → node id, as the replicas list them."""
    listed = check(api.get("/v1/nodes"))["nodes"]
    return {node["advertise_url"].split("//")[1].split(":")[0]: node["id"] for node in listed}


def check(response: httpx.Response, status: int | None = None):
    assert response.is_success if status is None else response.status_code == status, response.text
    return response.json()


def run(api: httpx.Client, sid: str, command: str, **extra) -> dict:
    body = check(api.post(f"/v1/sessions/{sid}/exec", json={"command": command, "timeout_ms": 60_000, **extra}))
    assert body.get("exit_code") == 0 or extra.get("background"), body
    return body


def create(api: httpx.Client, **body) -> dict:
    return check(api.post("/v1/sessions", json=body or {"ephemeral": True}), 201)


@pytest.fixture(scope="module")
def spread(cluster, apis):
    """Two sessions through replica 1: best of two by free memory puts them on different nodes.
    Each serves HTTP, a WebSocket echo and a line echo, for the forwarding tests."""
    sessions = [create(apis[0]) for _ in range(2)]
    for session in sessions:
        sid = session["id"]
        check(apis[0].post(f"/v1/sessions/{sid}/upload", files={"file": ("servers.py", SANDBOX_SERVERS.encode())},
                           data={"path": "/workspace/servers.py"}))
        run(apis[0], sid, "mkdir -p www && echo hello-from-$(hostname) > www/index.txt")
        for command in (f"cd www && exec python3 -m http.server {HTTP_PORT} --bind 0.0.0.0",
                        f"exec python3 /workspace/servers.py ws-echo {WS_PORT}",
                        f"exec python3 /workspace/servers.py line-echo {TCP_PORT}"):
            run(apis[0], sid, command, background=True)
        run(apis[0], sid, " && ".join(
            f"until python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 1)' 2>/dev/null; "
            "do sleep 0.2; done" for port in (HTTP_PORT, WS_PORT, TCP_PORT)))
    yield sessions
    for session in sessions:
        apis[1].delete(f"/v1/sessions/{session['id']}", params={"force": "true"})


# --- spread and routing -------------------------------------------------------------------------
def test_sessions_spread_over_both_nodes(cluster, apis, spread):
    ids = node_ids(cluster, apis[0])
    assert set(ids) == {"127.0.0.2", "127.0.0.3"}
    placed = {check(apis[1].get(f"/v1/sessions/{s['id']}"))["node_id"] for s in spread}
    assert placed == set(ids.values())


def test_exec_files_and_sse_through_either_replica(apis, spread):
    for session in spread:
        sid = session["id"]
        hostnames = {run(api, sid, "hostname")["output"].strip() for api in apis}
        assert len(hostnames) == 1  # both replicas reach the one VM
        payload = os.urandom(300_000)
        check(apis[0].post(f"/v1/sessions/{sid}/upload", files={"file": ("blob", payload)},
                           data={"path": "/workspace/blob"}))
        downloaded = apis[1].get(f"/v1/sessions/{sid}/download", params={"path": "/workspace/blob"})
        assert downloaded.status_code == 200 and downloaded.content == payload
        # A background command: its SSE stream through one replica, stdin and kill through the other.
        command = check(apis[1].post(f"/v1/sessions/{sid}/exec", json={
            "command": "read line; echo got-$line; sleep 300", "background": True}))["command_id"]
        check(apis[0].post(f"/v1/sessions/{sid}/commands/{command}/stdin", json={"input": "one\n"}))
        seen = ""
        with apis[0].stream("GET", f"/v1/sessions/{sid}/commands/{command}/stream") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                seen += line + "\n"
                if "got-one" in seen:
                    break
        assert "got-one" in seen
        check(apis[1].post(f"/v1/sessions/{sid}/commands/{command}/kill", json={"signal": "KILL"}))
        wait_until(lambda sid=sid, command=command: check(apis[0].get(f"/v1/sessions/{sid}/commands/{command}"))[
            "status"] != "running", 30, interval=0.2, message="the killed command ends")


def pty_output_until(ws, marker: bytes, timeout: float = 30) -> bytes:
    """What a PTY WebSocket sent until `marker` appeared (TimeoutError after `timeout`)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        message = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        seen += message if isinstance(message, bytes) else b""
    return seen


def test_pty_through_either_replica(cluster, apis, spread):
    from websockets.sync.client import connect

    for replica, session in zip(cluster.replicas, spread, strict=True):
        url = f"ws://127.0.0.1:{replica.port}/v1/sessions/{session['id']}/pty?rows=24&cols=80"
        with connect(url, additional_headers={"Authorization": f"Bearer {cluster.admin_key}"},
                     open_timeout=60) as ws:
            ws.send(b"echo pty-$((6*7)); stty size\n")
            assert b"pty-42" in pty_output_until(ws, b"24 80")
            ws.send(b"exit 0\n")
    # A refusal on the node reaches the client as the same denied upgrade.
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{cluster.replicas[0].port}/v1/sessions/{spread[0]['id']}/pty", open_timeout=30)
    assert refused.value.response.status_code == 401


def test_forwarding_path_host_style_websocket_and_tunnel(cluster, apis, spread, tmp_path):
    from websockets.sync.client import connect

    for api, session in zip(apis, spread, strict=True):
        sid = session["id"]
        hostname = run(api, sid, "hostname")["output"].strip()
        path_style = api.get(f"/s/{sid}/forward/{HTTP_PORT}/index.txt")
        assert path_style.status_code == 200 and path_style.text == f"hello-from-{hostname}\n"
        port = int(api.base_url.port or 0)
        host_style = api.get(f"/forward/{HTTP_PORT}/index.txt", headers={"Host": f"{sid}.localhost:{port}"})
        assert host_style.status_code == 200 and host_style.text == f"hello-from-{hostname}\n"
        with connect(f"ws://127.0.0.1:{port}/s/{sid}/forward/{WS_PORT}/socket", open_timeout=60,
                     additional_headers={"Authorization": f"Bearer {cluster.admin_key}"}, max_size=None) as ws:
            blob = os.urandom(100_000)
            ws.send(blob)
            assert ws.recv(timeout=30) == blob
    # `chaser forward`: a raw TCP tunnel through replica 2 to the session on the other node.
    session = spread[0]["id"]
    config = tmp_path / "cli.json"
    config.write_text(json.dumps({"api_url": cluster.replicas[1].url, "api_key": cluster.admin_key,
                                  "current_session": session}))
    env = {key: value for key, value in os.environ.items() if key not in ("CHASER_API_URL", "CHASER_API_KEY")}
    local = free_port()
    tunnel = subprocess.Popen([*CHASER, "forward", str(TCP_PORT), str(local)], cwd=REPO, start_new_session=True,
                              env={**env, "CHASER_CONFIG": str(config)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        assert f"127.0.0.1:{local}" in tunnel.stdout.readline().decode()
        with socket.create_connection(("127.0.0.1", local), timeout=30) as conn:
            conn.sendall(b"through a replica\n")
            received = b""
            while not received.endswith(b"\n"):
                chunk = conn.recv(4096)
                assert chunk
                received += chunk
        assert received == b"through a replica\n"
    finally:
        os.killpg(tunnel.pid, signal.SIGINT)
        assert tunnel.wait(30) in (0, 130)


async def test_mcp_through_a_replica(cluster, spread):
    headers = {"Authorization": f"Bearer {cluster.admin_key}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(300, connect=10)) as http:  # noqa: SIM117
        async with streamable_http_client(f"{cluster.replicas[1].url}/v1/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                for target in spread:
                    ran = await session.call_tool("terminal", {"session_id": target["id"], "command": "echo mcp-ok"})
                    assert not ran.is_error, ran.content
                    assert "mcp-ok" in ran.structured_content["output"]


def test_a_node_serves_only_the_replicas(cluster, spread):
    node = cluster.nodes[0]
    assert httpx.get(f"{node.url}/healthz").status_code == 200  # the probes are open
    headers = {"Authorization": f"Bearer {cluster.admin_key}"}
    for token in (None, "wrong-token-of-16-chars"):
        sent = {**headers, **({"x-chaser-node-token": token} if token else {})}
        refused = httpx.get(f"{node.url}/v1/sessions", headers=sent)
        assert refused.status_code == 401 and refused.json()["code"] == "node_token_required"
    allowed = httpx.get(f"{node.url}/v1/sessions", headers={**headers, "x-chaser-node-token": NODE_TOKEN})
    assert allowed.status_code == 200
    # With the token, the caller's key is still checked (against the shared database).
    unauthenticated = httpx.get(f"{node.url}/v1/sessions", headers={"x-chaser-node-token": NODE_TOKEN})
    assert unauthenticated.status_code == 401 and unauthenticated.json()["code"] == "unauthorized"


# --- workspaces ---------------------------------------------------------------------------------
def test_concurrent_creates_for_one_workspace_through_two_replicas_make_one_vm(cluster, apis):
    workspace = check(apis[0].post("/v1/workspaces", json={"name": "shared"}))
    answers: list[httpx.Response] = []
    start = threading.Barrier(2)

    def create_through(api: httpx.Client) -> None:
        start.wait()
        answers.append(api.post("/v1/sessions", json={"workspace": "shared"}))

    threads = [threading.Thread(target=create_through, args=(api,)) for api in apis]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert all(answer.status_code in (200, 201) for answer in answers), [a.text for a in answers]
    assert len({answer.json()["id"] for answer in answers}) == 1
    active = [s for s in check(apis[1].get("/v1/sessions"))["sessions"] if s.get("workspace_id") == workspace["id"]]
    assert len(active) == 1
    sid = active[0]["id"]
    run(apis[1], sid, "echo kept > /workspace/kept.txt")
    check(apis[0].delete(f"/v1/sessions/{sid}"))
    # Its next session goes to the node holding its disk, whichever replica is asked.
    again = create(apis[1], workspace="shared")
    assert again["node_id"] == active[0]["node_id"]
    assert run(apis[0], again["id"], "cat /workspace/kept.txt")["output"] == "kept\n"
    check(apis[1].delete(f"/v1/sessions/{again['id']}"))
    check(apis[0].delete("/v1/workspaces/shared"))


def test_cordon_keeps_new_sessions_off_a_node(cluster, apis):
    ids = node_ids(cluster, apis[0])
    cordoned, other = ids["127.0.0.2"], ids["127.0.0.3"]
    check(apis[0].post(f"/v1/nodes/{cordoned}/cordon"))
    try:
        placed = [create(apis[i % 2]) for i in range(2)]
        assert {s["node_id"] for s in placed} == {other}
        for session in placed:
            check(apis[1].delete(f"/v1/sessions/{session['id']}"))
    finally:
        check(apis[1].post(f"/v1/nodes/{cordoned}/uncordon"))


# --- processes that die -------------------------------------------------------------------------
def test_a_node_over_tls_with_labels(postgres, tmp_path):
    """A node serving HTTPS (its certificate, for 127.0.0.4), reached by a replica that trusts it
    (CHASER_NODE_CA_BUNDLE): exec and the PTY WebSocket (wss to the node) through the replica; the
    labels it registers. A cluster of its own: the module's replicas do not trust this certificate."""
    from websockets.sync.client import connect

    cert, key = tmp_path / "node.crt", tmp_path / "node.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=node",
                    "-addext", "subjectAltName=IP:127.0.0.4", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    tls = Cluster(base=tmp_path / "tls", database_url=postgres.create_database(), common_env={
        "CHASER_NODE_LABELS": json.dumps({"zone": "test"})})
    try:
        node = tls.add_node("127.0.0.4", tls=(cert, key), args=("--label", "disk=ssd"))
        replica = tls.add_replica(CHASER_NODE_CA_BUNDLE=str(cert))
        untrusting = tls.add_replica()
        with tls.client(replica) as api, tls.client(untrusting) as other:
            [listed] = check(api.get("/v1/nodes"))["nodes"]
            assert listed["advertise_url"] == node.url and node.url.startswith("https://")
            assert listed["labels"] == {"zone": "test", "disk": "ssd"}
            session = create(api)
            assert run(api, session["id"], "echo over-tls")["output"] == "over-tls\n"
            url = f"ws://127.0.0.1:{replica.port}/v1/sessions/{session['id']}/pty"
            with connect(url, additional_headers={"Authorization": f"Bearer {tls.admin_key}"}, open_timeout=60) as ws:
                ws.send(b"echo tls-$((6*7))\n")
                pty_output_until(ws, b"tls-42")
            # A replica that does not trust the node's certificate does not talk to it.
            refused = other.post(f"/v1/sessions/{session['id']}/exec", json={"command": "true"})
            assert refused.status_code == 503 and refused.json()["code"] == "node_unavailable", refused.text
            # Plain HTTP to the node's port gets no answer from the API.
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"http://127.0.0.4:{node.port}/readyz", timeout=10).raise_for_status()
            check(api.delete(f"/v1/sessions/{session['id']}"))
    finally:
        tls.stop()
    wait_until(lambda: not qemu_pids_under(node.home), 30, interval=0.2, message="QEMU left behind")


# --- workspace moves and drains -------------------------------------------------------------------

def cli(cluster: Cluster, replica: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHASER_")}
    env.update(CHASER_API_URL=cluster.replicas[replica].url, CHASER_API_KEY=cluster.admin_key,
               CHASER_CONFIG=str(cluster.base / f"cli-{replica}.json"))
    return subprocess.run([*CHASER, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def workspace_dirs(node: Process) -> set[str]:
    root = node.home / "workspaces"
    return {path.name for path in root.iterdir()} if root.is_dir() else set()


def node_of(cluster: Cluster, host: str) -> Process:
    return next(node for node in cluster.nodes if node.host == host)


def session_on(api: httpx.Client, workspace: str) -> dict:
    return create(api, workspace=workspace)


def test_workspace_move_with_checksum(cluster, apis):
    ids = node_ids(cluster, apis[0])
    hosts = {node_id: host for host, node_id in ids.items()}
    workspace = check(apis[0].post("/v1/workspaces", json={"name": "movable"}))
    session = session_on(apis[0], "movable")
    source, target = session["node_id"], next(n for n in ids.values() if n != session["node_id"])
    run(apis[0], session["id"], "head -c 3000000 /dev/urandom > /workspace/blob && echo first > /workspace/note")
    before = run(apis[0], session["id"], "sha256sum /workspace/blob")["output"].split()[0]
    check(apis[1].post("/v1/workspaces/movable/snapshots", json={"name": "first"}))
    run(apis[0], session["id"], "echo second > /workspace/note && sync")
    check(apis[0].post("/v1/workspaces/movable/snapshots", json={"name": "with-memory", "memory": True}))

    busy = apis[1].post("/v1/workspaces/movable/move", json={"node_id": target})
    assert busy.status_code == 409 and busy.json()["code"] == "workspace_busy", busy.text
    check(apis[0].delete(f"/v1/sessions/{session['id']}"))

    # Bad input: nothing moves.
    for body, status, code in (({"node_id": "node_0000"}, 404, "node_not_found"),
                               ({"node_id": "elsewhere"}, 400, None), ({}, 400, None),
                               ({"node_id": target, "extra": 1}, 400, None)):
        refused = apis[0].post("/v1/workspaces/movable/move", json=body)
        assert refused.status_code == status, refused.text
        assert code is None or refused.json()["code"] == code
    reader = check(apis[0].post("/v1/keys", json={"name": "ws-only", "scopes": ["workspaces.write"]}))["key"]
    forbidden = apis[0].post("/v1/workspaces/movable/move", json={"node_id": target},
                             headers={"Authorization": f"Bearer {reader}"})
    assert forbidden.status_code == 403, forbidden.text
    check(apis[0].post(f"/v1/nodes/{target}/cordon"))
    try:
        cordoned = apis[0].post("/v1/workspaces/movable/move", json={"node_id": target})
        assert cordoned.status_code == 409 and cordoned.json()["code"] == "node_not_accepting", cordoned.text
    finally:
        check(apis[0].post(f"/v1/nodes/{target}/uncordon"))
    assert check(apis[0].get("/v1/workspaces/movable"))["node_id"] == source

    # The move, with the CLI through replica 2.
    moved = cli(cluster, 1, "workspaces", "move", "movable", "--node", target, "--json")
    assert moved.returncode == 0, moved.stderr
    result = json.loads(moved.stdout)
    assert result["moved"] and result["from_node_id"] == source and result["node_id"] == target
    assert result["files"] >= 2 and len(result["sha256"]) == 64 and result["bytes"] >= 3_000_000
    assert check(apis[1].get("/v1/workspaces/movable"))["node_id"] == target
    assert workspace["id"] not in workspace_dirs(node_of(cluster, hosts[source]))
    target_dir = node_of(cluster, hosts[target]).home / "workspaces" / workspace["id"]
    assert (target_dir / "disk.img").is_file() and list((target_dir / "snapshots").glob("*.img"))
    assert list((target_dir / "snapshots").glob("*.state/meta.json"))  # the saved memory came along
    listed = {item["name"]: item["memory"] for item in check(apis[1].get("/v1/workspaces/movable/snapshots"))}
    assert listed == {"first": False, "with-memory": True}
    assert not [name for name in workspace_dirs(node_of(cluster, hosts[target])) if name.startswith(".incoming")]
    again = cli(cluster, 0, "workspaces", "move", "movable", "--node", target, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["moved"] is False, again.stderr

    # Its sessions now start where its disk is, with its files; its snapshot came along.
    after = session_on(apis[1], "movable")
    assert after["node_id"] == target
    assert run(apis[1], after["id"], "sha256sum /workspace/blob")["output"].split()[0] == before
    assert run(apis[0], after["id"], "cat /workspace/note")["output"] == "second\n"
    check(apis[0].delete(f"/v1/sessions/{after['id']}"))
    check(apis[0].post("/v1/workspaces/movable/snapshots/first/restore", json={}))
    restored = session_on(apis[0], "movable")
    assert restored["node_id"] == target
    assert run(apis[0], restored["id"], "cat /workspace/note")["output"] == "first\n"
    check(apis[0].delete(f"/v1/sessions/{restored['id']}"))
    check(apis[0].delete("/v1/workspaces/movable"))
    assert workspace["id"] not in workspace_dirs(node_of(cluster, hosts[target]))


def test_a_node_refuses_a_bad_or_corrupted_workspace_stream(cluster, apis):
    """The receiving side alone: a stream whose checksum does not match what was written, or that is
    malformed, is refused and leaves nothing on the node."""
    import hashlib
    import struct

    workspace = check(apis[0].post("/v1/workspaces", json={"name": "stream-target"}))
    node = cluster.nodes[0]
    url = f"{node.url}/_node/workspaces/{workspace['id']}/disk"

    def record(kind: bytes, payload: dict) -> bytes:
        body = json.dumps(payload).encode()
        return kind + struct.pack(">I", len(body)) + body

    data = b"payload" * 100
    wrong = hashlib.sha256(b"not it").digest()
    streams = {
        "checksum_mismatch": record(b"H", {"files": 1, "bytes": 4096}) + record(
            b"F", {"path": "disk.img", "size": len(data), "mode": 0o600})
            + b"D" + struct.pack(">QI", 0, len(data)) + data + b"E" + wrong + b"Z",
        "invalid_request": record(b"H", {"files": 1, "bytes": 0}) + record(
            b"F", {"path": "../escape", "size": 1, "mode": 0o600}),
    }
    for code, stream in streams.items():
        answer = httpx.put(url, content=stream, headers={"x-chaser-node-token": NODE_TOKEN}, timeout=60)
        assert answer.json()["code"] == code, answer.text
        assert answer.status_code == (502 if code == "checksum_mismatch" else 400)
    assert httpx.put(url, content=b"Z", timeout=60).status_code == 401  # no token
    assert not (node.home / "escape").exists() and not (node.home / "workspaces" / "escape").exists()
    assert not [name for name in workspace_dirs(node) if name.startswith(".incoming") or name == workspace["id"]]
    check(apis[0].delete(f"/v1/workspaces/{workspace['id']}"))


def test_drain_moves_idle_workspaces_and_keeps_busy_ones(cluster, apis):
    ids = node_ids(cluster, apis[0])
    drained, other = ids["127.0.0.2"], ids["127.0.0.3"]
    for name in ("idle", "busy"):
        check(apis[0].post("/v1/workspaces", json={"name": name}))
        pinned = check(apis[1].post(f"/v1/workspaces/{name}/move", json={"node_id": drained}))
        assert pinned["node_id"] == drained and pinned["moved"] is False  # no disk yet: only placed
    idle = session_on(apis[0], "idle")
    assert idle["node_id"] == drained
    run(apis[0], idle["id"], "echo idle-data > /workspace/data && sync")
    check(apis[0].delete(f"/v1/sessions/{idle['id']}"))
    busy = session_on(apis[1], "busy")
    assert busy["node_id"] == drained
    try:
        drain = cli(cluster, 0, "nodes", "drain", drained, "--json")
        assert drain.returncode == 1, drain.stderr  # a workspace stayed
        result = json.loads(drain.stdout)
        assert result["node"]["status"] == "draining" and result["moved"] == 1 and result["kept"] == 1
        by_name = {item["name"]: item for item in result["workspaces"]}
        assert by_name["idle"]["node_id"] == other and by_name["busy"]["node_id"] is None
        assert "active session" in by_name["busy"]["error"]
        assert check(apis[1].get("/v1/workspaces/idle"))["node_id"] == other
        # Draining: no new sessions there; the moved workspace's session starts on the other node.
        elsewhere = create(apis[0])
        assert elsewhere["node_id"] == other
        check(apis[0].delete(f"/v1/sessions/{elsewhere['id']}"))
        moved = session_on(apis[1], "idle")
        assert moved["node_id"] == other
        assert run(apis[1], moved["id"], "cat /workspace/data")["output"] == "idle-data\n"
        assert run(apis[0], busy["id"], "echo still-running")["output"] == "still-running\n"
        check(apis[0].delete(f"/v1/sessions/{moved['id']}"))
    finally:
        check(apis[1].post(f"/v1/nodes/{drained}/uncordon"))
        apis[0].delete(f"/v1/sessions/{busy['id']}")
    for name in ("idle", "busy"):
        check(apis[0].delete(f"/v1/workspaces/{name}"))


def test_bulk_terminate_through_a_replica_ends_sessions_on_their_nodes(cluster, apis):
    ids = node_ids(cluster, apis[0])
    check(apis[0].post("/v1/workspaces", json={"name": "bulk"}))
    check(apis[0].post("/v1/workspaces/bulk/move", json={"node_id": ids["127.0.0.2"]}))  # placed, no disk yet
    check(apis[0].post(f"/v1/nodes/{ids['127.0.0.2']}/cordon"))
    try:
        other = create(apis[0])  # on 127.0.0.3
    finally:
        check(apis[0].post(f"/v1/nodes/{ids['127.0.0.2']}/uncordon"))
    in_workspace = session_on(apis[1], "bulk")
    assert {other["node_id"], in_workspace["node_id"]} == set(ids.values())
    before = {node.name: len(qemu_pids_under(node.home)) for node in cluster.nodes}
    answer = check(apis[1].post("/v1/sessions/bulk-terminate",
                                json={"ids": [other["id"], "ses_0000000000000000"], "workspaces": ["bulk", "nope"]}))
    assert sorted(answer["terminated"]) == sorted([other["id"], in_workspace["id"]])
    assert {item["id"]: item["code"] for item in answer["failed"]} == {
        "ses_0000000000000000": "session_not_found", "nope": "workspace_not_found"}
    for session in (other, in_workspace):
        assert check(apis[0].get(f"/v1/sessions/{session['id']}"))["status"] == "terminated"
    wait_until(lambda: all(len(qemu_pids_under(node.home)) < before[node.name] for node in cluster.nodes), 60,
               interval=0.2, message="the VMs did not stop")
    check(apis[0].delete("/v1/workspaces/bulk"))


def test_replicas_share_a_keys_rate_limit(cluster, apis):
    """Each key has one bucket in the database, whichever replica it asks (and a node, behind
    them, charges nothing again)."""
    limited = [cluster.add_replica(CHASER_RATE_LIMIT_PER_MINUTE="1", CHASER_RATE_LIMIT_BURST="4")
               for _ in range(2)]
    try:
        key = check(apis[0].post("/v1/keys", json={"name": "rate-limited"}))["key"]
        headers = {"Authorization": f"Bearer {key}"}
        answers = [httpx.get(f"{limited[index % 2].url}/v1/sessions", headers=headers, timeout=30)
                   for index in range(6)]
        assert [answer.status_code for answer in answers] == [200, 200, 200, 200, 429, 429], \
            [answer.text for answer in answers]
        assert [answer.headers["x-ratelimit-remaining"] for answer in answers[:4]] == ["3", "2", "1", "0"]
        assert answers[4].json()["code"] == "rate_limited" and int(answers[4].headers["Retry-After"]) >= 1
        assert check(apis[1].get("/v1/sessions"))  # the admin key's own bucket is untouched
    finally:
        for replica in limited:
            replica.stop()
            cluster.replicas.remove(replica)


def test_a_killed_replica_leaves_the_other_serving(cluster, apis, spread):
    first = cluster.replicas[0]
    first.signal(signal.SIGKILL)
    try:
        for session in spread:
            assert run(apis[1], session["id"], "echo still-here")["output"] == "still-here\n"
    finally:
        first.start()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_node_restart_keeps_its_sessions(cluster, apis, sig):
    node = cluster.nodes[0]
    session = create(apis[0])
    ids = node_ids(cluster, apis[0])
    if session["node_id"] != ids["127.0.0.2"]:  # the other node: place one there by cordoning this one
        check(apis[0].delete(f"/v1/sessions/{session['id']}"))
        check(apis[0].post(f"/v1/nodes/{ids['127.0.0.3']}/cordon"))
        try:
            session = create(apis[0])
        finally:
            check(apis[0].post(f"/v1/nodes/{ids['127.0.0.3']}/uncordon"))
    sid = session["id"]
    assert session["node_id"] == ids["127.0.0.2"]
    pid = run(apis[0], sid, "sleep 1000 > /dev/null 2>&1 & echo $! > /workspace/pid; "
                            "echo state > /workspace/state; cat /workspace/pid")["output"].strip()
    node.signal(sig)
    assert not node.alive
    node.start()
    after = run(apis[1], sid, "cat /workspace/state; kill -0 $(cat /workspace/pid) && cat /workspace/pid")
    assert after["output"] == f"state\n{pid}\n"
    assert check(apis[1].get(f"/v1/sessions/{sid}"))["status"] == "running"
    check(apis[1].delete(f"/v1/sessions/{sid}"))


def test_a_killed_node_loses_its_sessions_and_rejoins(cluster, apis):
    ids = node_ids(cluster, apis[0])
    victim: Process = cluster.nodes[1]
    victim_id = ids["127.0.0.3"]
    check(apis[0].post(f"/v1/nodes/{ids['127.0.0.2']}/cordon"))
    try:
        doomed = create(apis[0])
    finally:
        check(apis[0].post(f"/v1/nodes/{ids['127.0.0.2']}/uncordon"))
    assert doomed["node_id"] == victim_id
    victim.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        wait_until(lambda: check(apis[1].get(f"/v1/sessions/{doomed['id']}"))["status"] == "failed", 30,
                   interval=0.2, message="the lost node's session fails")
        assert time.monotonic() - killed_at < 30
        failed = check(apis[1].get(f"/v1/sessions/{doomed['id']}"))
        assert failed["end_reason"] == "node_lost"
        gone = apis[0].post(f"/v1/sessions/{doomed['id']}/exec", json={"command": "true"})
        assert gone.status_code == 409 and gone.json()["code"] == "session_not_running"
        elsewhere = create(apis[1])
        assert elsewhere["node_id"] == ids["127.0.0.2"]
        check(apis[0].delete(f"/v1/sessions/{elsewhere['id']}"))
    finally:
        victim.start()  # it removes the VM the database failed (nobody adopts it)
    wait_until(lambda: not check(apis[0].get(f"/v1/nodes/{victim_id}"))["lost"], 30, interval=0.2,
               message="the node rejoins")
    wait_until(lambda: not qemu_pids_under(victim.home), 30, interval=0.2, message="its failed session's VM stops")
