"""The API end to end: a real `chaser server` process, real microVMs, real HTTP
(httpx and the official chaser-sdk client)."""

from __future__ import annotations

import hashlib
import json
import os
import socket

import httpx
import pytest
from chaser_sdk import ChaserClient
from chaser_sdk.errors import ChaserApiError

from chaser.client._sse import iter_sse
from tests.integration.conftest import qemu_pids_under
from tests.support import wait_until

pytestmark = pytest.mark.vm


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code, response.text
    assert set(response.json()) == {"code", "message"}
    assert response.headers.get("x-request-id")


def parse_sse(text: str) -> list[tuple[str, dict]]:
    return [(event.event, event.json()) for event in iter_sse(text.splitlines())]


def stream_text(events) -> str:
    return "".join(data["data"] for event, data in events if event == "output")


@pytest.fixture(scope="module")
def sdk(server) -> ChaserClient:
    return ChaserClient(base_url=server.url, api_key=server.api_key, timeout=300)


@pytest.fixture(scope="module")
def http(server):
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def session(sdk):
    """One ephemeral session shared by the tests that only run commands in it."""
    info = sdk.sessions.create(session_type="sandbox", ephemeral=True)
    yield info
    sdk.sessions.terminate(info["id"], force=True)


def test_first_start_printed_and_saved_a_key(server):
    log = server.log()
    assert f"API URL: http://127.0.0.1:{server.port}" in log
    assert f"API key: {server.api_key}" in log
    assert oct(server.config_file.stat().st_mode & 0o777) == "0o600"
    assert json.loads(server.config_file.read_text())["api_url"] == server.url


def test_session_lifecycle_with_sdk(sdk, session):
    assert session["id"].startswith("ses_") and session["status"] == "running"
    assert session["endpoints"]["control"].endswith(f"/v1/sessions/{session['id']}")
    assert session["id"] in [s["id"] for s in sdk.sessions.list()]
    assert sdk.sessions.get(session["id"])["status"] == "running"
    assert sdk.sessions.wait_until_ready(session["id"], timeout_secs=5)["id"] == session["id"]


def test_exec(sdk, session):
    sid = session["id"]
    result = sdk.exec.in_session(sid, command="echo hello; echo err >&2; exit 3")
    assert result["status"] == "failed" and result["exit_code"] == 3
    assert result["output"] == "hello\nerr\n" and result["kind"] == "sandbox_exec"
    ok = sdk.exec.in_session(sid, command="pwd; echo $GREETING", cwd="/tmp", env={"GREETING": "hi there"})
    assert ok["status"] == "completed" and ok["exit_code"] == 0 and ok["output"] == "/tmp\nhi there\n"
    assert sdk.exec.in_session(sid, command="pwd")["output"] == "/workspace\n"
    timed = sdk.exec.in_session(sid, command="sleep 30", timeout_ms=500)
    assert timed["status"] == "timed_out"
    binary = sdk.exec.in_session(sid, command="printf 'a\\377b'")
    assert binary["output"] == "a\ufffdb"


def test_self_test(sdk, session):
    result = sdk.sessions.self_test(session["id"])
    assert result["kind"] == "sandbox_self_test" and result["status"] == "ok"
    runtime = result["runtime"]
    assert runtime["cwd"] == "/workspace" and runtime["user"] == "root" and runtime["workspace_root_present"]
    assert "/usr/bin" in runtime["path_entries"] and runtime["chaser_mode"] == "sandbox"
    assert runtime["chaser"]["session_id"] == session["id"] and runtime["chaser"]["runtime_env"] == "microvm"
    assert "python3" in runtime["tools"]


def test_background_command_stdin_stream_kill(sdk, http, session):
    sid = session["id"]
    started = sdk.exec.in_session(sid, command="cat; echo done", background=True)
    assert started["status"] == "running" and started["pid"]
    cid = started["command_id"]
    base = f"/v1/sessions/{sid}/commands/{cid}"
    sdk.commands.send_stdin(sid, cid, "hello\n")
    events = parse_sse(http.get(f"{base}/stream", params={"max_bytes": 6, "interval_ms": 5000}).text)
    assert stream_text(events) == "hello\n" and all(e == "output" for e, _ in events)
    assert events[0][1]["offset"] == 0
    assert http.post(f"{base}/stdin", json={"input": "d29ybGQK", "encoding": "base64", "close": True}).json()["closed"]
    info = sdk.commands.wait_for_completion(sid, cid, timeout_secs=60, interval_secs=0.2)
    assert info["status"] == "completed" and info["exit_code"] == 0 and info["output"] == "hello\nworld\ndone\n"
    resumed = parse_sse(http.get(f"{base}/stream", params={"from": 6}).text)
    assert stream_text(resumed) == "world\ndone\n" and resumed[0][1]["offset"] == 6
    assert resumed[-1] == ("exit", {"status": "completed", "exit_code": 0})
    assert cid in [c["command_id"] for c in sdk.commands.list(sid)]
    assert_error(http.post(f"{base}/stdin", json={"input": "late"}), 409, "command_finished")

    sleeper = sdk.exec.in_session(sid, command="echo start; sleep 300", background=True)["command_id"]
    assert_error(http.post(f"/v1/sessions/{sid}/commands/{sleeper}/kill", json={"signal": "SIGNOPE"}), 400,
                 "invalid_signal")
    with http.stream("GET", f"/v1/sessions/{sid}/commands/{sleeper}/stream") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(lines) == "event: output"
        assert sdk.commands.kill(sid, sleeper)["signal"] == "TERM"
        rest = "\n".join(lines)
    assert 'event: exit' in rest and '"status":"killed"' in rest
    assert sdk.commands.get(sid, sleeper)["status"] == "killed"
    assert_error(http.post(f"/v1/sessions/{sid}/commands/{sleeper}/kill", json={}), 409, "command_finished")
    assert_error(http.get(f"/v1/sessions/{sid}/commands/c-nope"), 404, "command_not_found")


def test_upload_download(sdk, http, session, server):
    sid = session["id"]
    payload = os.urandom(1024 * 1024)
    result = sdk.files.upload(sid, path="/workspace/data/blob.bin", data=payload)
    assert result == {"path": "/workspace/data/blob.bin", "size": len(payload)}
    downloaded = sdk.files.download(sid, "/workspace/data/blob.bin")
    assert hashlib.sha256(downloaded).hexdigest() == hashlib.sha256(payload).hexdigest()
    check = sdk.exec.in_session(sid, command="sha256sum /workspace/data/blob.bin")["output"].split()[0]
    assert check == hashlib.sha256(payload).hexdigest()
    response = http.get(f"/v1/sessions/{sid}/download", params={"path": "/workspace/data/blob.bin"})
    assert response.content == payload
    assert_error(http.get(f"/v1/sessions/{sid}/download", params={"path": "/workspace/missing"}), 404, "file_not_found")
    assert_error(http.get(f"/v1/sessions/{sid}/download", params={"path": "/workspace/data"}), 400, "is_a_directory")
    assert_error(http.get(f"/v1/sessions/{sid}/download", params={"path": "/a\x00b"}), 400, "invalid_request")
    assert_error(http.post(f"/v1/sessions/{sid}/upload", data={"path": "/workspace/x"}), 400, "invalid_request")

    # Past the hard cap (4x the 16 MiB limit) by Content-Length: refused before the body is read,
    # and the connection closes (a body under the cap is drained instead: tests/unit/test_sdk_contracts.py).
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall((f"POST /v1/sessions/{sid}/upload HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {server.api_key}\r\n"
                      "Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 100000000\r\n\r\n").encode())
        sock.settimeout(10)
        head = b""
        while b"payload_too_large" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                break
            head += chunk
        head = head.decode(errors="replace")
    assert head.startswith("HTTP/1.1 413") and "payload_too_large" in head

    # Over the limit while streaming (no Content-Length): 413 and nothing written.
    def body():
        yield b'--B\r\nContent-Disposition: form-data; name="path"\r\n\r\n/workspace/big.bin\r\n'
        yield b'--B\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
        for _ in range(17):
            yield b"z" * (1024 * 1024)
        yield b"\r\n--B--\r\n"

    response = http.post(f"/v1/sessions/{sid}/upload", content=body(),
                         headers={"Content-Type": "multipart/form-data; boundary=B"})
    assert_error(response, 413, "payload_too_large")
    # The agent discards its partial temp file once the connection drops.
    wait_until(lambda: sdk.exec.in_session(sid, command="ls -a /workspace")["output"].split() == [".", "..", "data"],
               10, interval=0.5, message="a partial upload was left in /workspace")


def test_bad_inputs(http, session):
    sid = session["id"]
    cases = [
        (b"{oops", 400, "invalid_request"),
        (b'{"command": ""}', 400, "invalid_request"),
        (b'{"command": 12}', 400, "invalid_request"),
        (b'{"command": "ls", "extra": true}', 400, "invalid_request"),
        (b'{"command": "ls", "timeout_ms": -1}', 400, "invalid_request"),
        (b'{"command": "ls", "timeout_ms": 999999999999}', 400, "invalid_request"),
        (json.dumps({"command": "x" * 70000}).encode(), 400, "invalid_request"),
    ]
    for body, status, code in cases:
        assert_error(http.post(f"/v1/sessions/{sid}/exec", content=body,
                               headers={"Content-Type": "application/json"}), status, code)
    assert_error(http.post("/v1/sessions/ses_nope/exec", json={"command": "ls"}), 404, "session_not_found")
    assert_error(http.post("/v1/sessions", json={"session_type": "browser"}), 400, "unsupported_session_type")
    assert_error(http.post("/v1/sessions", json={"ephemeral": True, "image": "ghcr.io/x/y z"}), 400, "invalid_image")
    assert_error(http.post("/v1/sessions", json={}), 400, "workspace_required")
    assert_error(http.get("/v1/nope"), 404, "not_found")
    assert http.get("/openapi.json").json()["paths"]["/v1/exec"]["post"]["responses"]["200"]


def test_keys(sdk, server, http):
    created = sdk.keys.create(name="reader", scopes=["sessions.read"])
    reader = ChaserClient(base_url=server.url, api_key=created["key"])
    assert isinstance(reader.sessions.list(), list)
    with pytest.raises(ChaserApiError) as denied:
        reader.sessions.create(ephemeral=True)
    assert denied.value.status == 403 and denied.value.code == "forbidden" and denied.value.request_id
    assert created["id"] in [k["id"] for k in sdk.keys.list()]
    assert sdk.keys.revoke(created["id"]) == {"id": created["id"], "revoked": True}
    with pytest.raises(ChaserApiError) as revoked:
        reader.sessions.list()
    assert revoked.value.status == 401 and revoked.value.code == "unauthorized"
    assert_error(httpx.get(f"{server.url}/v1/sessions"), 401, "unauthorized")
    assert_error(http.get("/v1/sessions", headers={"X-Chaser-Account": "other"}), 403, "forbidden")


def test_exec_ephemeral_auto_provision(sdk):
    result = sdk.exec.run(command="echo auto; hostname", ephemeral=True)
    assert result["status"] == "completed" and result["output"].startswith("auto\n") and result["ephemeral"]
    assert sdk.sessions.get(result["session_id"])["status"] == "terminated"


def test_workspace_persists_across_sessions(sdk, http):
    workspace = sdk.workspaces.create(name="persist", session_type="sandbox")
    assert workspace["id"].startswith("ws_") and workspace["persistence"] is True
    assert "persist" in [w["name"] for w in sdk.workspaces.list()]
    first = sdk.sessions.create(session_type="sandbox", workspace="persist")
    assert first["persistence"] is True and first["workspace_id"] == workspace["id"]
    reused = http.post("/v1/sessions", json={"workspace": "persist"})  # its running session is the answer
    assert reused.status_code == 200 and reused.json()["id"] == first["id"], reused.text
    sdk.exec.in_session(first["id"], command="echo kept > /workspace/note.txt && mkdir -p /opt/x && touch /opt/x/y")
    sdk.files.upload(first["id"], path="/workspace/up.bin", data=b"\x00\x01uploaded")
    sdk.sessions.terminate(first["id"])  # graceful: the disk is flushed
    assert sdk.sessions.get(first["id"])["status"] == "terminated"

    # /v1/exec starts a session for the workspace, then reuses it.
    again = sdk.exec.run(command="cat /workspace/note.txt; ls /opt/x", workspace="persist")
    assert again["output"] == "kept\ny\n" and again["session_id"] != first["id"]
    reused = sdk.exec.run(command="true", workspace="persist")
    assert reused["session_id"] == again["session_id"] and reused["workspace_id"] == workspace["id"]
    assert sdk.files.download(again["session_id"], "/workspace/up.bin") == b"\x00\x01uploaded"
    listed = {w["name"]: w for w in sdk.workspaces.list()}
    assert listed["persist"]["active_session_id"] == again["session_id"]  # the session /v1/exec started
    assert listed["persist"]["last_session_id"] == again["session_id"]
    assert_error(http.delete("/v1/workspaces/persist"), 409, "workspace_busy")
    sdk.workspaces.delete("persist", force=True)
    assert sdk.sessions.get(again["session_id"])["status"] == "terminated"
    assert_error(http.get("/v1/workspaces/persist"), 404, "workspace_not_found")


def test_bulk_terminate_and_terminated_session(sdk, http):
    other = sdk.sessions.create(ephemeral=True)
    result = sdk.sessions.bulk_terminate({"ids": [other["id"], "ses_missing"], "force": True})
    assert result["terminated"] == [other["id"]]
    assert result["failed"][0]["id"] == "ses_missing" and result["failed"][0]["code"] == "session_not_found"
    assert_error(http.post(f"/v1/sessions/{other['id']}/exec", json={"command": "ls"}), 409, "session_not_running")
    assert http.delete(f"/v1/sessions/{other['id']}").json()["status"] == "terminated"  # idempotent


def test_server_restart_with_open_session(server_factory):
    # No warm pool: the test counts the QEMUs under the home.
    first = server_factory(CHASER_WARM_POOL_SIZE="0").start()
    with first.client() as client:
        session = client.post("/v1/sessions", json={"ephemeral": True}).json()
        assert session["status"] == "running"
        assert qemu_pids_under(first.home)
    pids = qemu_pids_under(first.home)
    first.kill(group=False)  # the server dies; its VMs run on and the next server adopts them
    second = server_factory(CHASER_WARM_POOL_SIZE="0").start()
    with second.client() as client:
        row = client.get(f"/v1/sessions/{session['id']}").json()
        assert row["status"] == "running", row
        assert client.post(f"/v1/sessions/{session['id']}/exec", json={"command": "echo adopted"}).json()[
            "output"].strip() == "adopted"
    assert qemu_pids_under(first.home) == pids  # the same QEMU (tests/integration/test_adopt.py)
    assert f"API key: {second.api_key}" in second.log() and "stored in" in second.log()
    with second.client() as client:
        open_session = client.post("/v1/sessions", json={"ephemeral": True}).json()
    second.stop()  # SIGTERM: a graceful shutdown stops the VMs itself
    assert qemu_pids_under(first.home) == []
    third = server_factory(CHASER_WARM_POOL_SIZE="0").start()
    with third.client() as client:
        for sid in (session["id"], open_session["id"]):
            assert client.get(f"/v1/sessions/{sid}").json()["end_reason"] == "server_shutdown"


def test_idle_timeout_and_crash_detection(server_factory):
    srv = server_factory(CHASER_SESSION_IDLE_TIMEOUT_S="2", CHASER_WARM_POOL_SIZE="0").start()
    with srv.client() as client:
        idle = client.post("/v1/sessions", json={"ephemeral": True}).json()["id"]
        crashing = client.post("/v1/sessions", json={"ephemeral": True}).json()["id"]
        pids = set(qemu_pids_under(srv.home))
        assert len(pids) == 2
        # Kill one QEMU (either session): one ends vm_crashed, the other idle_timeout.
        owner = json.loads(next((srv.home / "vms").glob("*/owner.json")).read_text())["qemu_pid"]
        os.kill(owner, 9)

        def ended() -> dict | None:
            states = {sid: client.get(f"/v1/sessions/{sid}").json() for sid in (idle, crashing)}
            return states if all(state["status"] != "running" for state in states.values()) else None

        states = wait_until(ended, 30, interval=0.5, message="a session still runs")
        reasons = sorted(state["end_reason"] for state in states.values())
        assert reasons == ["idle_timeout", "vm_crashed"], states
        assert sorted(state["status"] for state in states.values()) == ["failed", "terminated"]
    assert qemu_pids_under(srv.home) == []
