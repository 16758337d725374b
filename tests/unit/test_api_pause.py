"""Pause, resume, wake on request, fork and idle handling over the API, on the fake runtime
(the service's rules; tests/integration/test_pause_fork.py runs them on real VMs)."""

from __future__ import annotations

import json
import time

from chaser import errors
from tests.support import Harness, assert_error


def pause(harness: Harness, sid: str) -> dict:
    response = harness.client.post(f"/v1/sessions/{sid}/pause")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "paused"
    return dict(response.json())


def test_pause_then_wake_on_exec_and_files(harness):
    sid = harness.session()["id"]
    vm = harness.vm(sid)
    vm.files["/tmp/kept"] = b"kept"
    pause(harness, sid)
    assert vm.stopped and harness.services.sessions.live[sid].vm is None
    assert harness.client.get(f"/v1/sessions/{sid}").json()["status"] == "paused"  # a GET does not wake it
    assert harness.runtime.resumed == []
    listed = harness.client.get("/v1/sessions", params={"status": "paused"}).json()["sessions"]
    assert [s["id"] for s in listed] == [sid]
    assert_error(harness.client.post(f"/v1/sessions/{sid}/pause"), 409, "session_not_running")

    response = harness.client.get(f"/v1/sessions/{sid}/download", params={"path": "/tmp/kept"})
    assert response.status_code == 200 and response.content == b"kept", response.text
    assert len(harness.runtime.resumed) == 1
    assert harness.client.get(f"/v1/sessions/{sid}").json()["status"] == "running"
    assert not (harness.settings.sessions_dir / sid / "memory.state").exists()

    pause(harness, sid)
    response = harness.client.post(f"/v1/sessions/{sid}/exec", json={"command": "echo hi"})
    assert response.status_code == 200, response.text
    assert len(harness.runtime.resumed) == 2

    assert harness.client.delete(f"/v1/sessions/{sid}").json()["status"] == "terminated"
    assert not (harness.settings.sessions_dir / sid).exists()
    assert_error(harness.client.post(f"/v1/sessions/{sid}/pause"), 409, "session_not_running")
    assert_error(harness.client.post(f"/v1/sessions/{sid}/resume"), 409, "session_not_running")


def test_pause_failure_keeps_the_session_running(harness):
    sid = harness.session()["id"]
    harness.runtime.save_error = errors.InsufficientStorage("the host's disk is full")
    assert_error(harness.client.post(f"/v1/sessions/{sid}/pause"), 507, "insufficient_storage")
    assert harness.client.get(f"/v1/sessions/{sid}").json()["status"] == "running"
    assert not harness.vm(sid).stopped


def test_incompatible_state_is_409_and_the_session_stays_paused(harness):
    sid = harness.session()["id"]
    pause(harness, sid)
    (harness.settings.sessions_dir / sid / "meta.json").write_text(json.dumps({"compat": "older"}))
    assert_error(harness.client.post(f"/v1/sessions/{sid}/resume"), 409, "snapshot_incompatible")
    assert_error(harness.client.post(f"/v1/sessions/{sid}/exec", json={"command": "ls"}), 409,
                 "snapshot_incompatible")
    assert harness.client.get(f"/v1/sessions/{sid}").json()["status"] == "paused"


def test_a_paused_workspace_session_holds_its_workspace_and_wakes_for_it(harness):
    harness.client.post("/v1/workspaces", json={"name": "dev"})
    sid = harness.session(ephemeral=False, workspace="dev")["id"]
    pause(harness, sid)
    response = harness.client.post("/v1/sessions", json={"workspace": "dev"})
    assert response.status_code == 200 and response.json()["id"] == sid, response.text
    assert response.json()["status"] == "running" and len(harness.runtime.resumed) == 1


def test_fork_validation_quota_and_all_or_nothing(tmp_path):
    h = Harness(tmp_path, max_sessions_per_account=3, max_fork_count=4)
    try:
        sid = h.session()["id"]
        assert_error(h.client.post(f"/v1/sessions/{sid}/fork", json={"count": 0}), 400, "invalid_request")
        assert_error(h.client.post(f"/v1/sessions/{sid}/fork", json={"count": 5}), 400, "invalid_request")
        assert_error(h.client.post(f"/v1/sessions/{sid}/fork", json={"count": 3}), 429, "quota_exceeded")
        assert_error(h.client.post(f"/v1/sessions/{sid}/fork", json={"count": 2, "workspace_names": ["a", "a"]}),
                     400, "invalid_request")
        assert_error(h.client.post("/v1/sessions/ses_nope/fork", json={"count": 1}), 404, "session_not_found")
        response = h.client.post(f"/v1/sessions/{sid}/fork", json={"count": 2})
        assert response.status_code == 201, response.text
        forks = response.json()["sessions"]
        assert len(forks) == 2 and all(f["status"] == "running" and f["ephemeral"] for f in forks)
        hostnames = {h.vm(f["id"]).hostname for f in forks}
        assert len(hostnames) == 2 and h.vm(sid).spec.hostname not in hostnames
        assert not h.vm(sid).stopped  # the source goes on
        assert not list(h.settings.sessions_dir.glob("fork-*"))
    finally:
        h.close()


def test_idle_action_pauses_workspace_sessions_and_terminates_ephemeral_ones(tmp_path):
    h = Harness(tmp_path, session_idle_timeout_s=60, paused_ttl_s=120)
    try:
        h.client.post("/v1/workspaces", json={"name": "dev"})
        ws = h.session(ephemeral=False, workspace="dev")["id"]
        eph = h.session()["id"]
        for sid in (ws, eph):
            h.services.sessions.live[sid].last_activity = time.time() - 61
        ended = h.run(h.services.reaper.reap_once)
        assert ended == [(eph, "idle_timeout")]
        assert h.client.get(f"/v1/sessions/{ws}").json()["status"] == "paused"
        h.services.sessions.live[ws].last_activity = time.time() - 121
        assert h.run(h.services.reaper.reap_once) == [(ws, "paused_ttl")]
        row = h.client.get(f"/v1/sessions/{ws}").json()
        assert row["status"] == "terminated" and row["end_reason"] == "paused_ttl"
        assert not (h.settings.sessions_dir / ws).exists()
    finally:
        h.close()


def test_a_paused_session_is_taken_back_after_a_restart(tmp_path):
    h = Harness(tmp_path)
    sid = h.session()["id"]
    running = h.session()["id"]
    pause(h, sid)
    h.services.sessions.live.clear()  # what a killed server leaves: rows and the saved state
    assert h.services.reaper.recover_on_start() == 1
    assert h.client.get(f"/v1/sessions/{running}").json()["end_reason"] == "server_restart"
    assert h.client.get(f"/v1/sessions/{sid}").json()["status"] == "paused"
    assert h.services.sessions.live[sid].paused
    h.close()


def test_a_resume_that_fails_keeps_the_state_unless_it_was_consumed(harness):
    sid = harness.session()["id"]
    pause(harness, sid)
    # Refused before anything loaded (the host is full): still paused, still resumable.
    harness.runtime.capacity_error = errors.CapacityExhausted("full", retry_after_s=3)
    assert_error(harness.client.post(f"/v1/sessions/{sid}/resume"), 503, "capacity_exhausted")
    harness.runtime.capacity_error = None
    assert harness.client.get(f"/v1/sessions/{sid}").json()["status"] == "paused"
    # Loaded (its meta file consumed), then the VM died: the session ends, failed.
    harness.runtime.resume_error = errors.VMCrashed("QEMU exited after loading")
    assert_error(harness.client.post(f"/v1/sessions/{sid}/exec", json={"command": "ls"}), 503, "vm_crashed")
    row = harness.client.get(f"/v1/sessions/{sid}").json()
    assert row["status"] == "failed" and row["end_reason"] == "vm_crashed"
    assert not (harness.settings.sessions_dir / sid).exists()


def test_waking_counts_against_the_account_limit(tmp_path):
    h = Harness(tmp_path, max_sessions_per_account=1)
    try:
        sid = h.session()["id"]
        pause(h, sid)
        other = h.session()["id"]  # a paused session holds no VM: room for another
        assert_error(h.client.post(f"/v1/sessions/{sid}/resume"), 429, "quota_exceeded")
        assert h.client.get(f"/v1/sessions/{sid}").json()["status"] == "paused"
        h.client.delete(f"/v1/sessions/{other}")
        assert h.client.post(f"/v1/sessions/{sid}/resume").json()["status"] == "running"
    finally:
        h.close()
