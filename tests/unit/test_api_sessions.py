"""Sessions, exec, commands, files and workspaces over a fake runtime."""

from __future__ import annotations

import asyncio
import time

from chaser import errors
from chaser.client._sse import iter_sse
from tests.support import assert_error, wait_until


def test_create_ephemeral_session_shape(harness):
    session = harness.session()
    assert session["id"].startswith("ses_") and session["status"] == "running"
    assert session["session_type"] == "sandbox" and session["persistence"] is False
    assert session["endpoints"]["control"].endswith(f"/v1/sessions/{session['id']}")
    assert session["created_at"].endswith("Z") and session["expires_at"].endswith("Z")
    assert session["image"] == "chaser/base" and session["workspace_id"] is None
    spec = harness.runtime.started[0].spec
    assert spec.writable_disk is None and spec.image_disk == harness.runtime.base_image_disk
    listed = harness.client.get("/v1/sessions").json()
    assert listed["total"] == 1 and listed["sessions"][0]["id"] == session["id"]
    assert harness.client.get(f"/v1/sessions/{session['id']}").json()["status"] == "running"


def test_create_rules(harness):
    client = harness.client
    assert_error(client.post("/v1/sessions", json={"session_type": "browser"}), 400, "unsupported_session_type")
    assert_error(client.post("/v1/sessions", json={}), 400, "workspace_required")
    assert_error(client.post("/v1/sessions"), 400, "workspace_required")
    for bad in ("Not A Ref", "ghcr.io/x/y:bad tag", "oci:/etc/layout", "docker-archive:/tmp/x.tar"):
        assert_error(client.post("/v1/sessions", json={"ephemeral": True, "image": bad}), 400, "invalid_image")
    assert_error(client.post("/v1/sessions", json={"image": "chaser/base"}), 400, "invalid_request")
    client.post("/v1/workspaces", json={"name": "dev"})
    assert_error(client.post("/v1/sessions", json={"workspace": "dev", "image": "chaser/base"}), 400, "invalid_request")
    assert_error(client.post("/v1/sessions", json={"workspace": "nope"}), 404, "workspace_not_found")
    assert_error(client.post("/v1/sessions", json={"ephemeral": True, "ttl_seconds": 0}), 400, "invalid_request")
    assert_error(client.post("/v1/sessions", json={"ephemeral": True, "ttl_seconds": 10**9}), 400, "invalid_request")
    assert_error(client.post("/v1/sessions", json={"ephemeral": True, "proxy": "not a url"}), 400, "invalid_request")
    assert_error(client.post("/v1/sessions", json={"ephemeral": "yes"}), 400, "invalid_request")
    assert harness.session(image="chaser/base")["image"] == "chaser/base"
    assert harness.runtime.started  # only valid requests reached the runtime


def test_default_workspace_setting(make_harness):
    h = make_harness(default_workspace="default")
    session = h.client.post("/v1/sessions", json={}).json()
    assert session["persistence"] is True
    workspace = h.client.get("/v1/workspaces/default").json()
    assert workspace["id"] == session["workspace_id"] and workspace["active_session_id"] == session["id"]


def test_start_failure_is_503_and_recorded(harness):
    harness.runtime.fail_with = errors.BootTimeout("agent not ready after 60s")
    assert_error(harness.client.post("/v1/sessions", json={"ephemeral": True}), 503, "boot_timeout")
    harness.runtime.fail_with = OSError("no space left")
    assert_error(harness.client.post("/v1/sessions", json={"ephemeral": True}), 503, "runtime_unavailable")
    rows = harness.client.get("/v1/sessions?status=all").json()["sessions"]
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert rows[0]["end_reason"] == "boot_timeout" and rows[0]["ended_at"]
    assert not harness.services.sessions.live


def test_terminate_is_idempotent_and_frees_the_vm(harness):
    session = harness.session()
    vm = harness.vm(session["id"])
    ended = harness.client.delete(f"/v1/sessions/{session['id']}").json()
    assert ended["status"] == "terminated" and ended["end_reason"] == "terminated" and ended["ended_at"]
    assert vm.stopped and not harness.services.sessions.live
    assert harness.client.delete(f"/v1/sessions/{session['id']}?force=true").json()["status"] == "terminated"
    assert_error(harness.client.post(f"/v1/sessions/{session['id']}/exec", json={"command": "ls"}), 409,
                 "session_not_running")
    assert_error(harness.client.delete("/v1/sessions/ses_missing"), 404, "session_not_found")
    assert harness.client.get("/v1/sessions").json()["total"] == 0
    assert harness.client.get("/v1/sessions?status=terminated").json()["total"] == 1


def test_bulk_terminate(harness):
    a, b = harness.session(), harness.session()
    result = harness.client.post("/v1/sessions/bulk-terminate", json={"ids": [a["id"], "ses_nope"]}).json()
    assert result["terminated"] == [a["id"]]
    assert result["failed"] == [{"id": "ses_nope", "code": "session_not_found", "message": "no session 'ses_nope'"}]
    result = harness.client.post("/v1/sessions/bulk-terminate", json={"all": True, "force": True}).json()
    assert result == {"terminated": [b["id"]], "failed": []}
    assert_error(harness.client.post("/v1/sessions/bulk-terminate", json={"ids": "x"}), 400, "invalid_request")


def test_exec_results(harness):
    sid = harness.session()["id"]
    run = lambda **body: harness.client.post(f"/v1/sessions/{sid}/exec", json=body).json()  # noqa: E731
    ok = run(command="echo hi")
    assert ok["kind"] == "sandbox_exec" and ok["status"] == "completed" and ok["exit_code"] == 0
    assert ok["output"] == "hi\n" and ok["session_id"] == sid and ok["ephemeral"] is True
    assert ok["command_id"].startswith("c-") and ok["output_truncated"] is False
    assert run(command="exit 3")["status"] == "failed" and run(command="exit 3")["exit_code"] == 3
    timed = run(command="sleep 10", timeout_ms=100)
    assert timed["status"] == "timed_out" and timed["exit_code"] == 137
    assert run(command="printenv FOO", env={"FOO": "bar"})["output"] == "bar\n"
    assert_error(harness.client.post(f"/v1/sessions/{sid}/exec", json={"command": "pwd", "cwd": "sub"}), 400,
                 "invalid_request")  # no such directory
    harness.run(harness.vm(sid).mkdir, "/workspace/sub")
    assert run(command="pwd", cwd="sub")["output"] == "/workspace/sub\n"
    assert run(command="binary")["output"] == "\ufffd\ufffdok"
    background = run(command="cat", background=True)
    assert background["status"] == "running" and "exit_code" not in background and background["pid"]


def test_commands_stdin_kill_and_stream(harness):
    sid = harness.session()["id"]
    client = harness.client
    cid = client.post(f"/v1/sessions/{sid}/exec", json={"command": "cat", "background": True}).json()["command_id"]
    base = f"/v1/sessions/{sid}/commands/{cid}"
    assert client.post(f"{base}/stdin", json={"input": "hello "}).json()["written"] == 6
    assert client.post(f"{base}/stdin", json={"input": "d29ybGQ=", "encoding": "base64"}).json()["written"] == 5
    assert_error(client.post(f"{base}/stdin", json={"input": "!!", "encoding": "base64"}), 400, "invalid_request")
    assert_error(client.post(f"{base}/stdin", json={"input": "x", "encoding": "latin-1"}), 400, "invalid_request")
    info = client.get(base).json()
    assert info["status"] == "running" and info["output"] == "hello world" and info["output_bytes"] == 11
    commands = client.get(f"/v1/sessions/{sid}/commands").json()["commands"]
    assert cid in [c["command_id"] for c in commands] and isinstance(commands[0]["started_at_epoch"], int)

    events = parse_sse(client.get(f"{base}/stream?max_bytes=5").text)
    assert events == [("output", {"offset": 0, "data": "hello", "encoding": "utf-8"})]
    assert_error(client.post(f"{base}/kill", json={"signal": "NOPE"}), 400, "invalid_signal")
    killed = client.post(f"{base}/kill", json={}).json()
    assert killed["signal"] == "TERM" and killed["status"] == "signal_sent"
    assert_error(client.post(f"{base}/kill", json={"signal": "KILL"}), 409, "command_finished")
    assert_error(client.post(f"{base}/stdin", json={"input": "late"}), 409, "command_finished")
    events = parse_sse(client.get(f"{base}/stream?from=5").text)
    assert events[0] == ("output", {"offset": 5, "data": " world", "encoding": "utf-8"})
    assert events[-1] == ("exit", {"status": "killed", "exit_code": 143})
    assert client.get(base).json()["status"] == "killed"
    assert_error(client.get(f"/v1/sessions/{sid}/commands/c-missing"), 404, "command_not_found")
    assert_error(client.get(f"/v1/sessions/{sid}/commands/c-missing/stream"), 404, "command_not_found")
    assert_error(client.get(f"{base}/stream?from=-1"), 400, "invalid_request")


def test_stream_falls_back_to_base64_and_splits_characters(harness):
    from chaser.service.commands import utf8_prefix

    assert utf8_prefix("é".encode() + b"\xe2\x82", at_end=False) == ("é", 2)
    assert utf8_prefix(b"\xff\xfe", at_end=False) == ("", 0)
    assert utf8_prefix(b"ok\xe2\x82", at_end=True) == ("", 0)
    sid = harness.session()["id"]
    cid = harness.client.post(f"/v1/sessions/{sid}/exec", json={"command": "binary"}).json()["command_id"]
    events = parse_sse(harness.client.get(f"/v1/sessions/{sid}/commands/{cid}/stream").text)
    assert events[0] == ("output", {"offset": 0, "data": "//5vaw==", "encoding": "base64"})
    assert events[1] == ("exit", {"status": "completed", "exit_code": 0})


def test_self_test(harness):
    sid = harness.session(proxy="http://proxy.local:3128")["id"]
    result = harness.client.post(f"/v1/sessions/{sid}/self-test").json()
    assert result["kind"] == "sandbox_self_test" and result["status"] == "ok" and result["session_id"] == sid
    runtime = result["runtime"]
    assert runtime["chaser_mode"] == "sandbox" and runtime["chaser_exec"] and runtime["chaser_agent"]
    facts = harness.run(harness.vm(sid).selftest)  # what the agent reported, passed on
    assert runtime["cwd"] == facts["cwd"] == "/workspace" and runtime["path_entries"] == facts["path_entries"]
    assert runtime["proxy"]["http_proxy"] == "http://proxy.local:3128"
    assert runtime["chaser"]["runtime_env"] == "microvm" and runtime["chaser"]["agent_impl"].startswith("chaser-agent/")
    assert runtime["chaser"]["workspace_root"] == "/workspace" and runtime["chaser"]["image"] == "chaser/base"
    assert harness.runtime.started[0].spec.env["http_proxy"] == "http://proxy.local:3128"


def upload(client, sid, path, data, **kwargs):
    return client.post(f"/v1/sessions/{sid}/upload", data={"path": path}, files={"file": ("f.bin", data)}, **kwargs)


def test_upload_download(harness):
    sid = harness.session()["id"]
    client = harness.client
    payload = bytes(range(256)) * 1000
    assert upload(client, sid, "/workspace/a/b.bin", payload).json() == {"path": "/workspace/a/b.bin", "size": 256000}
    response = client.get(f"/v1/sessions/{sid}/download", params={"path": "/workspace/a/b.bin"})
    assert response.status_code == 200 and response.content == payload
    assert upload(client, sid, "rel.txt", b"x").json()["path"] == "/workspace/rel.txt"
    assert upload(client, sid, "/workspace/empty", b"").json()["size"] == 0
    assert client.get(f"/v1/sessions/{sid}/download", params={"path": "/workspace/empty"}).content == b""
    assert_error(client.get(f"/v1/sessions/{sid}/download", params={"path": "/workspace/none"}), 404, "file_not_found")
    assert_error(client.get(f"/v1/sessions/{sid}/download", params={"path": "/workspace/a"}), 400, "is_a_directory")
    assert_error(client.get(f"/v1/sessions/{sid}/download", params={"path": "/x\x00y"}), 400, "invalid_request")
    assert_error(client.get(f"/v1/sessions/{sid}/download"), 400, "invalid_request")
    assert_error(upload(client, sid, "/x\x00y", b"1"), 400, "invalid_request")
    assert_error(client.post(f"/v1/sessions/{sid}/upload", data={"path": "/workspace/x"}), 400, "invalid_request")
    assert_error(client.post(f"/v1/sessions/{sid}/upload", files={"file": ("f", b"1")}), 400, "invalid_request")
    assert_error(client.post(f"/v1/sessions/{sid}/upload", content=b"raw", headers={"Content-Type": "text/plain"}),
                 400, "invalid_request")


def test_file_part_before_path_is_accepted(harness):
    sid = harness.session()["id"]
    boundary = "XyZ"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n"
            f"DATA\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\n/workspace/late\r\n"
            f"--{boundary}--\r\n").encode()
    response = harness.client.post(f"/v1/sessions/{sid}/upload", content=body,
                                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.json() == {"path": "/workspace/late", "size": 4}


def test_upload_limits(make_harness):
    h = make_harness(max_transfer_bytes=100_000)
    sid = h.session()["id"]
    too_big = b"x" * 300_000
    assert_error(upload(h.client, sid, "/workspace/big", too_big), 413, "payload_too_large")

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(30):
            yield b"--B\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\n/workspace/big\r\n" if _ == 0 else b""
            if _ == 0:
                yield b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n"
            yield b"y" * 10_000
        yield b"\r\n--B--\r\n"

    response = h.client.post(f"/v1/sessions/{sid}/upload", content=chunks(),
                             headers={"Content-Type": "multipart/form-data; boundary=B"})
    assert_error(response, 413, "payload_too_large")
    assert "/workspace/big" not in h.vm(sid).files
    h.vm(sid).files["/workspace/huge"] = b"z" * 100_001
    assert_error(h.client.get(f"/v1/sessions/{sid}/download", params={"path": "/workspace/huge"}), 413,
                 "payload_too_large")


def test_workspaces(harness):
    client = harness.client
    workspace = client.post("/v1/workspaces", json={"name": "dev", "session_type": "sandbox"}).json()
    assert workspace["id"].startswith("ws_") and workspace["status"] == "ready" and workspace["persistence"] is True
    assert workspace["image"] == "chaser/base" and workspace["active_session_id"] is None
    assert_error(client.post("/v1/workspaces", json={"name": "dev"}), 409, "workspace_exists")
    assert_error(client.post("/v1/workspaces", json={"name": "x", "session_type": "browser"}), 400,
                 "unsupported_session_type")
    assert_error(client.post("/v1/workspaces", json={"name": "x", "image": "ghcr.io/a/b c"}), 400, "invalid_image")
    with_image = client.post("/v1/workspaces", json={"name": "py", "image": "python:3.12"})
    assert with_image.status_code == 200 and with_image.json()["image"] == "docker.io/library/python:3.12"
    assert client.delete("/v1/workspaces/py").status_code == 200
    assert_error(client.post("/v1/workspaces", json={"name": "bad name!"}), 400, "invalid_request")
    assert [w["name"] for w in client.get("/v1/workspaces").json()] == ["dev"]
    session = client.post("/v1/sessions", json={"workspace": "dev"}).json()
    assert session["persistence"] is True and session["workspace_id"] == workspace["id"]
    spec = harness.runtime.started[-1].spec
    assert spec.writable_disk == harness.settings.workspaces_dir / workspace["id"] / "disk.img"
    assert client.get("/v1/workspaces/dev").json()["active_session_id"] == session["id"]
    again = client.post("/v1/sessions", json={"workspace": workspace["id"]})  # its running session is the answer
    assert again.status_code == 200 and again.json()["id"] == session["id"] and len(harness.runtime.started) == 1
    assert_error(client.delete("/v1/workspaces/dev"), 409, "workspace_busy")
    assert client.delete("/v1/workspaces/dev?force=true").json() == {"id": workspace["id"], "deleted": True}
    assert client.get(f"/v1/sessions/{session['id']}").json()["status"] == "terminated"
    assert_error(client.get("/v1/workspaces/dev"), 404, "workspace_not_found")


def test_v1_exec_auto_provisions(harness):
    client = harness.client
    result = client.post("/v1/exec", json={"command": "echo one", "ephemeral": True}).json()
    assert result["output"] == "one\n" and result["ephemeral"] is True
    assert client.get(f"/v1/sessions/{result['session_id']}").json()["status"] == "terminated"
    client.post("/v1/workspaces", json={"name": "dev"})
    first = client.post("/v1/exec", json={"command": "echo a", "workspace": "dev"}).json()
    second = client.post("/v1/exec", json={"command": "echo b", "workspace": "dev"}).json()
    assert first["session_id"] == second["session_id"] and second["workspace"] == "dev"
    assert_error(client.post("/v1/exec", json={"command": "ls"}), 400, "workspace_required")
    assert_error(client.post("/v1/exec", json={"command": "ls", "workspace": "dev", "image": "x"}), 400,
                 "invalid_request")
    assert_error(client.post("/v1/exec", json={"command": "ls", "ephemeral": True, "background": True}), 400,
                 "invalid_request")
    harness.runtime.fail_with = errors.VMCrashed("QEMU failed to start")
    assert_error(client.post("/v1/exec", json={"command": "ls", "ephemeral": True}), 503, "vm_crashed")


def test_crashed_vm_marks_session_failed(harness):
    sid = harness.session()["id"]
    harness.vm(sid).crash()
    assert_error(harness.client.post(f"/v1/sessions/{sid}/exec", json={"command": "ls"}), 503, "vm_crashed")
    row = harness.client.get(f"/v1/sessions/{sid}").json()
    assert row["status"] == "failed" and row["end_reason"] == "vm_crashed"
    assert_error(harness.client.post(f"/v1/sessions/{sid}/exec", json={"command": "ls"}), 409, "session_not_running")
    sid2 = harness.session()["id"]
    harness.vm(sid2).crash()
    assert harness.client.get(f"/v1/sessions/{sid2}").json()["end_reason"] == "vm_crashed"


def test_reaper_idle_and_lifetime(make_harness):
    h = make_harness(session_idle_timeout_s=60)
    idle = h.session()["id"]
    short = h.session(ttl_seconds=1)["id"]
    busy = h.session()["id"]
    h.services.sessions.live[idle].last_activity -= 120
    h.services.sessions.live[busy].last_activity -= 120
    h.services.sessions.live[busy].active_requests = 1
    expires = h.services.sessions.live[short].expires_at.timestamp()
    wait_until(lambda: time.time() >= expires, timeout=5, message="the 1 s lifetime did not run out")
    ended = h.client.portal.call(h.services.reaper.reap_once)
    assert sorted(ended) == sorted([(idle, "idle_timeout"), (short, "max_lifetime")])
    assert h.client.get(f"/v1/sessions/{idle}").json()["end_reason"] == "idle_timeout"
    assert h.client.get(f"/v1/sessions/{short}").json()["end_reason"] == "max_lifetime"
    assert h.client.get(f"/v1/sessions/{busy}").json()["status"] == "running"


def test_restart_marks_open_sessions_terminated(make_harness, tmp_path):
    first = make_harness(tmp_path)
    sid = first.session()["id"]
    first.services.sessions.live.clear()  # as if the process died with its VMs
    first.close()
    second = make_harness(tmp_path)  # the same home: the same database
    row = second.client.get(f"/v1/sessions/{sid}").json()
    assert row["status"] == "terminated" and row["end_reason"] == "server_restart"


def test_shutdown_stops_vms(make_harness):
    h = make_harness()
    sid = h.session()["id"]
    vm = h.vm(sid)
    h.close()
    assert vm.stopped
    with h.services.db.session() as s:
        from chaser.store import SessionRow

        assert s.get(SessionRow, sid).end_reason == "server_shutdown"


def test_concurrent_terminate_and_exec(harness):
    sid = harness.session()["id"]
    harness.vm(sid).hold_exec = True  # the exec lasts until the VM stops: the terminates overlap it
    principal = harness.services.keys.authenticate(harness.admin_key)

    async def race():
        sessions, commands = harness.services.sessions, harness.services.commands
        from chaser.models import SessionExecCreate

        live = await sessions.live_session(principal, sid)
        results = await asyncio.gather(
            commands.exec(live, SessionExecCreate(command="echo x")),
            sessions.terminate(principal, sid),
            sessions.terminate(principal, sid, force=True),
            return_exceptions=True,
        )
        return results

    exec_result, first, second = harness.client.portal.call(race)
    assert isinstance(exec_result, errors.Conflict) and exec_result.code == "session_not_running"
    assert first.status == second.status == "terminated"
    assert not harness.services.sessions.live


def parse_sse(text: str) -> list[tuple[str, dict]]:
    return [(event.event, event.json()) for event in iter_sse(text.splitlines())]
