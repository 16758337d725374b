"""Pause, resume (and wake on request) and fork end to end: a real `chaser server`,
real microVMs, real processes inside them (docs/pause-and-fork.md)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time

import httpx
import pytest

from tests.integration.conftest import ServerProcess, qemu_pids_under
from tests.support.wait import wait_until

pytestmark = pytest.mark.vm

HOLDER_PORT = 8001
# A process holding a random value in memory, serving "<pid> <value>" on HOLDER_PORT.
HOLDER = (
    "import http.server, os\n"
    "value = os.urandom(8).hex()\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = f'{os.getpid()} {value}'.encode()\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()\n"
    "        self.wfile.write(body)\n"
    "    def log_message(self, *a): pass\n"
    f"http.server.HTTPServer(('127.0.0.1', {HOLDER_PORT}), H).serve_forever()\n"
)
SESSION_LIMIT = 6


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("chaser-pause")
    srv = ServerProcess(home=base / "home", config_file=base / "config.json",
                        extra_env={"CHASER_WARM_POOL_SIZE": "0",
                                   "CHASER_MAX_SESSIONS_PER_ACCOUNT": str(SESSION_LIMIT)}).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def api(server):
    with server.client() as client:
        yield client


def run(api: httpx.Client, sid: str, command: str, timeout_ms: int = 60_000) -> str:
    r = api.post(f"/v1/sessions/{sid}/exec", json={"command": command, "timeout_ms": timeout_ms})
    assert r.status_code == 200, r.text
    assert r.json().get("exit_code") == 0, r.json()
    return str(r.json().get("output", ""))


def status(api: httpx.Client, sid: str) -> str:
    r = api.get(f"/v1/sessions/{sid}")
    assert r.status_code == 200, r.text
    return str(r.json()["status"])


def assert_error(response: httpx.Response, status_code: int, code: str) -> None:
    assert response.status_code == status_code, response.text
    assert response.json()["code"] == code, response.text
    assert set(response.json()) == {"code", "message"}


def start_holder(api: httpx.Client, sid: str) -> str:
    """The holder runs in the background; answers its "<pid> <value>" (read inside the guest)."""
    r = api.post(f"/v1/sessions/{sid}/upload", files={"file": ("holder.py", HOLDER.encode())},
                 data={"path": "/tmp/holder.py"})
    assert r.status_code in (200, 201), r.text
    r = api.post(f"/v1/sessions/{sid}/exec", json={"command": "exec python3 /tmp/holder.py", "background": True})
    assert r.status_code == 200, r.text
    return holder_value(api, sid)


def holder_value(api: httpx.Client, sid: str) -> str:
    return run(api, sid, f"until python3 -c \"import urllib.request as u; print(u.urlopen("
                         f"'http://127.0.0.1:{HOLDER_PORT}/', timeout=2).read().decode())\" 2>/dev/null; "
                         "do sleep 0.1; done").strip()


def pause(api: httpx.Client, sid: str) -> dict:
    r = api.post(f"/v1/sessions/{sid}/pause")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "paused"
    return dict(r.json())


@pytest.fixture(scope="module")
def holder(api):
    """(session id, its holder's "<pid> <value>"): one VM shared by the tests of this module."""
    r = api.post("/v1/sessions", json={"ephemeral": True})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    yield sid, start_holder(api, sid)
    api.delete(f"/v1/sessions/{sid}", params={"force": "true"})


@pytest.fixture(scope="module")
def session(holder):
    return holder[0]


def test_pause_and_resume_keep_processes_files_and_memory(server, api, holder):
    session, held = holder
    run(api, session, "echo kept > /tmp/kept.txt")
    vms_before = len(qemu_pids_under(server.home))
    paused = pause(api, session)
    assert paused["id"] == session
    # Nothing of it runs, its state is on disk, and a GET does not wake it.
    wait_until(lambda: len(qemu_pids_under(server.home)) == vms_before - 1, 30, interval=0.1,
               message="the paused session's QEMU still runs")
    state = server.home / "sessions" / session
    assert (state / "meta.json").exists() and (state / "memory.state").stat().st_size > 0
    assert not list(state.glob("*.partial"))
    assert status(api, session) == "paused"
    assert session in [s["id"] for s in api.get("/v1/sessions").json()["sessions"]]  # still active
    assert [s["id"] for s in api.get("/v1/sessions", params={"status": "paused"}).json()["sessions"]] == [session]
    assert status(api, session) == "paused"
    # Pausing a paused session is a conflict.
    assert_error(api.post(f"/v1/sessions/{session}/pause"), 409, "session_not_running")

    # Wake on request (exec): the same process with the same value in memory, /tmp intact,
    # and the wall clock set to now.
    assert holder_value(api, session) == held
    assert status(api, session) == "running"
    assert run(api, session, "cat /tmp/kept.txt").strip() == "kept"
    guest_now = float(run(api, session, "date +%s.%N"))
    assert abs(guest_now - time.time()) < 5, (guest_now, time.time())
    assert not (state / "memory.state").exists()  # a running VM outdates it

    # Wake on request through the forwarding gateway.
    pause(api, session)
    r = api.get(f"/s/{session}/forward/{HOLDER_PORT}/")
    assert r.status_code == 200, r.text
    assert r.text == held
    assert status(api, session) == "running"

    # Explicit resume; resuming a running session answers it as it is.
    pause(api, session)
    r = api.post(f"/v1/sessions/{session}/resume")
    assert r.status_code == 200 and r.json()["status"] == "running", r.text
    r = api.post(f"/v1/sessions/{session}/resume")
    assert r.status_code == 200 and r.json()["status"] == "running", r.text
    assert holder_value(api, session) == held


def test_fork_copies_memory_and_disk_then_diverges(server, api, holder):
    session, held = holder
    assert holder_value(api, session) == held
    run(api, session, "echo source > /tmp/which.txt")
    r = api.post(f"/v1/sessions/{session}/fork", json={"count": 3})
    assert r.status_code == 201, r.text
    forks = [s["id"] for s in r.json()["sessions"]]
    assert r.json()["source_id"] == session and len(set(forks)) == 3
    try:
        assert all(s["status"] == "running" and s["ephemeral"] for s in r.json()["sessions"])
        # Each fork has the source's process, its in-memory value and its files.
        for fork in forks:
            assert holder_value(api, fork) == held
            assert run(api, fork, "cat /tmp/which.txt").strip() == "source"
        # Then they diverge independently; the source goes on unchanged.
        for fork in forks:
            run(api, fork, f"echo {fork} > /tmp/which.txt")
        for fork in forks:
            assert run(api, fork, "cat /tmp/which.txt").strip() == fork
        assert run(api, session, "cat /tmp/which.txt").strip() == "source"
        assert holder_value(api, session) == held
        # Own identities: hostnames and RNG output differ.
        hostnames = {run(api, sid, "hostname").strip() for sid in [session, *forks]}
        assert len(hostnames) == 4, hostnames
        random = {run(api, sid, "head -c 16 /dev/urandom | od -An -tx1").strip() for sid in [session, *forks]}
        assert len(random) == 4, random
    finally:
        for fork in forks:
            api.delete(f"/v1/sessions/{fork}", params={"force": "true"})
    for fork in forks:
        assert not (server.home / "sessions" / fork).exists()
    assert not list((server.home / "sessions").glob("fork-*"))


def test_fork_and_pause_refusals(server, api, session):
    assert_error(api.post(f"/v1/sessions/{session}/fork", json={"count": 0}), 400, "invalid_request")
    assert_error(api.post(f"/v1/sessions/{session}/fork", json={"count": 2, "workspace_names": ["a"]}),
                 400, "invalid_request")
    # Over the account's session limit: nothing is started.
    assert_error(api.post(f"/v1/sessions/{session}/fork", json={"count": SESSION_LIMIT}), 429, "quota_exceeded")
    assert_error(api.post("/v1/sessions/ses_nope/pause"), 404, "session_not_found")
    assert not list((server.home / "sessions").glob("fork-*"))


def test_disk_full_while_saving_keeps_the_session_running(server, api, session):
    state = server.home / "sessions" / session
    state.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "chaser-test-full", str(state)], check=True)
    try:
        assert_error(api.post(f"/v1/sessions/{session}/pause"), 507, "insufficient_storage")
        assert status(api, session) == "running"
        assert run(api, session, "echo alive").strip() == "alive"
        assert list(state.iterdir()) == []
    finally:
        subprocess.run(["umount", str(state)], check=True)
    assert_error(api.post(f"/v1/sessions/{session}/fork", json={"count": 1, "workspace_names": ["ws_0123456789abcdef"]}),
                 400, "invalid_request")
    assert api.post("/v1/workspaces", json={"name": "taken"}).status_code in (200, 201)
    assert_error(api.post(f"/v1/sessions/{session}/fork", json={"count": 1, "workspace_names": ["taken"]}),
                 409, "workspace_exists")
    assert not list((server.home / "sessions").glob("fork-*"))


def test_workspace_fork_gets_new_workspaces_and_incompatible_state_is_refused(server, api):
    assert api.post("/v1/workspaces", json={"name": "pausews"}).status_code in (200, 201)
    r = api.post("/v1/sessions", json={"workspace": "pausews"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    run(api, sid, "echo disk > /workspace/f.txt && sync")
    r = api.post(f"/v1/sessions/{sid}/fork", json={"count": 1, "workspace_names": ["pausews-fork"]})
    assert r.status_code == 201, r.text
    fork = r.json()["sessions"][0]
    assert not fork["ephemeral"] and fork["workspace_id"] != r.json()["sessions"][0].get("source")
    assert run(api, fork["id"], "cat /workspace/f.txt").strip() == "disk"
    run(api, fork["id"], "echo forked > /workspace/f.txt && sync")
    assert run(api, sid, "cat /workspace/f.txt").strip() == "disk"
    assert api.get("/v1/workspaces/pausews-fork").status_code == 200
    api.delete(f"/v1/sessions/{fork['id']}")

    # A state saved by other guest assets: 409 snapshot_incompatible, nothing lost; terminate,
    # and the workspace starts fresh on its disk.
    pause(api, sid)
    meta_file = server.home / "sessions" / sid / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["compat"]["guest"] = "an-older-guest"
    meta_file.write_text(json.dumps(meta))
    assert_error(api.post(f"/v1/sessions/{sid}/resume"), 409, "snapshot_incompatible")
    r = api.post(f"/v1/sessions/{sid}/exec", json={"command": "true"})
    assert_error(r, 409, "snapshot_incompatible")
    assert status(api, sid) == "paused"
    assert api.delete(f"/v1/sessions/{sid}").json()["status"] == "terminated"
    assert not (server.home / "sessions" / sid).exists()
    r = api.post("/v1/sessions", json={"workspace": "pausews"})
    assert r.status_code == 201, r.text
    assert run(api, r.json()["id"], "cat /workspace/f.txt").strip() == "disk"
    api.delete(f"/v1/sessions/{r.json()['id']}")


def test_paused_session_survives_a_server_restart(tmp_path):
    srv = ServerProcess(home=tmp_path / "home", config_file=tmp_path / "config.json",
                        extra_env={"CHASER_WARM_POOL_SIZE": "0"}).start()
    try:
        with srv.client() as api:
            sid = api.post("/v1/sessions", json={"ephemeral": True}).json()["id"]
            held = start_holder(api, sid)
            pause(api, sid)
        srv.stop()
        srv = ServerProcess(home=srv.home, config_file=srv.config_file, port=srv.port,
                            extra_env=srv.extra_env).start()
        with srv.client() as api:
            assert status(api, sid) == "paused"
            assert holder_value(api, sid) == held  # the same process, woken by the exec
            # Killed while pausing: it comes back paused (saved), running (its VM adopted and continued:
            # tests/integration/test_adopt.py) or ended, never half-saved.
            def pause_until_killed() -> None:
                with contextlib.suppress(httpx.HTTPError):  # the server dies under it
                    api.post(f"/v1/sessions/{sid}/pause", timeout=60)

            pausing = threading.Thread(target=pause_until_killed)
            pausing.start()
            wait_until(lambda: any((srv.home / "sessions" / sid).glob("memory.state*")), 60, interval=0.01,
                       message="the pause did not start writing")
            srv.kill()
            pausing.join(60)
        srv = ServerProcess(home=srv.home, config_file=srv.config_file, port=srv.port,
                            extra_env=srv.extra_env).start()
        with srv.client() as api:
            after = api.get(f"/v1/sessions/{sid}").json()
            assert after["status"] in ("paused", "running", "terminated"), after
            state = srv.home / "sessions" / sid
            assert not list(state.glob("*.partial")) if state.exists() else True
            if after["status"] in ("paused", "running"):
                assert holder_value(api, sid) == held
            else:
                assert after["end_reason"] == "server_restart" and not state.exists()
    finally:
        srv.stop()


def test_idle_workspace_session_pauses_then_wakes(tmp_path):
    srv = ServerProcess(home=tmp_path / "home", config_file=tmp_path / "config.json",
                        extra_env={"CHASER_WARM_POOL_SIZE": "0", "CHASER_SESSION_IDLE_TIMEOUT_S": "1"}).start()
    try:
        with srv.client() as api:
            assert api.post("/v1/workspaces", json={"name": "idle"}).status_code in (200, 201)
            sid = api.post("/v1/sessions", json={"workspace": "idle"}).json()["id"]
            run(api, sid, "echo idle > /tmp/mem.txt")
            wait_until(lambda: status(api, sid) == "paused", 60, interval=0.2,
                       message="the idle workspace session was not paused")
            assert run(api, sid, "cat /tmp/mem.txt").strip() == "idle"
            events = api.get("/v1/audit/events", params={"resource_id": sid}).json()
            actions = [e["action"] for e in events.get("events", events.get("items", []))]
            assert "session.paused" in actions and "session.resumed" in actions, actions
    finally:
        srv.stop()


def test_memory_snapshot_of_a_workspace_restores_its_processes(server, api):
    assert api.post("/v1/workspaces", json={"name": "memsnap"}).status_code in (200, 201)
    r = api.post("/v1/sessions", json={"workspace": "memsnap"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    held = start_holder(api, sid)
    run(api, sid, "echo on-disk > /workspace/f.txt")
    snap = api.post("/v1/workspaces/memsnap/snapshots", json={"name": "live", "memory": True})
    assert snap.status_code == 200, snap.text
    assert snap.json()["memory"] is True and snap.json()["used_bytes"] > 0
    assert holder_value(api, sid) == held  # the session went on
    run(api, sid, "echo later > /workspace/f.txt")
    plain = api.post("/v1/workspaces/memsnap/snapshots", json={"name": "plain"}).json()
    assert plain["memory"] is False
    assert api.delete(f"/v1/sessions/{sid}").json()["status"] == "terminated"

    r = api.post(f"/v1/workspaces/memsnap/snapshots/{snap.json()['id']}/restore")
    assert r.status_code == 200, r.text
    active = api.get("/v1/workspaces/memsnap").json()
    restored = api.get("/v1/sessions").json()["sessions"]
    session = next(s for s in restored if s["workspace_id"] == active["id"])
    assert session["status"] == "running" and session["id"] != sid
    assert holder_value(api, session["id"]) == held  # the snapshot's process, its memory
    assert run(api, session["id"], "cat /workspace/f.txt").strip() == "on-disk"
    listed = {s["name"]: s["memory"] for s in api.get("/v1/workspaces/memsnap/snapshots").json()}
    assert listed == {"live": True, "plain": False}

    # Without a running session there is no memory to keep.
    assert api.delete(f"/v1/sessions/{session['id']}").json()["status"] == "terminated"
    assert_error(api.post("/v1/workspaces/memsnap/snapshots", json={"memory": True}), 409, "session_not_running")
    snapshots_dir = server.home / "workspaces" / active["id"] / "snapshots"
    api.delete(f"/v1/workspaces/memsnap/snapshots/{snap.json()['id']}")
    assert not (snapshots_dir / f"{snap.json()['id']}.state").exists()
