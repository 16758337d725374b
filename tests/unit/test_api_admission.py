"""Admission over the API: host capacity (503 capacity_exhausted) and per-account quota (429)."""

from __future__ import annotations

from chaser import errors
from tests.support import Harness, assert_error


def test_capacity_exhausted_is_503_with_retry_after_and_leaves_nothing(harness):
    client = harness.client
    first = harness.session()
    harness.runtime.capacity_error = errors.CapacityExhausted("session limit 1 reached", retry_after_s=7)
    response = client.post("/v1/sessions", json={"ephemeral": True})
    body = assert_error(response, 503, "capacity_exhausted")
    assert body["message"] == "session limit 1 reached" and response.headers["Retry-After"] == "7"
    client.post("/v1/workspaces", json={"name": "dev"})
    assert_error(client.post("/v1/sessions", json={"workspace": "dev"}), 503, "capacity_exhausted")
    assert_error(client.post("/v1/exec", json={"ephemeral": True, "command": "ls"}), 503, "capacity_exhausted")
    assert_error(client.post("/v1/exec", json={"workspace": "dev", "command": "ls"}), 503, "capacity_exhausted")
    rows = client.get("/v1/sessions?status=all").json()["sessions"]
    assert [row["id"] for row in rows] == [first["id"]]
    assert len(harness.runtime.started) == 1 and list(harness.services.sessions.live) == [first["id"]]
    assert not harness.settings.workspaces_dir.exists() or not any(harness.settings.workspaces_dir.rglob("*.img"))
    harness.runtime.capacity_error = None
    assert harness.session()["status"] == "running"


def test_capacity_refused_inside_runtime_start_leaves_no_row(harness):
    """Concurrent creates: the runtime's own check in start() refuses after the service's passed."""
    harness.runtime.fail_with = errors.CapacityExhausted("host memory: 100 MiB available", retry_after_s=30)
    response = harness.client.post("/v1/sessions", json={"ephemeral": True})
    assert_error(response, 503, "capacity_exhausted")
    assert response.headers["Retry-After"] == "30"
    assert harness.client.get("/v1/sessions?status=all").json()["total"] == 0
    assert not harness.services.sessions.live


def test_account_quota(tmp_path):
    h = Harness(tmp_path, max_sessions_per_account=2)
    try:
        client = h.client
        a, b = h.session(), h.session()
        body = assert_error(client.post("/v1/sessions", json={"ephemeral": True}), 429, "quota_exceeded")
        assert "limit is 2" in body["message"] and "CHASER_MAX_SESSIONS_PER_ACCOUNT" in body["message"]
        assert_error(client.post("/v1/exec", json={"ephemeral": True, "command": "ls"}), 429, "quota_exceeded")
        assert client.get("/v1/sessions?status=all").json()["total"] == 2 and len(h.runtime.started) == 2

        other = h.key("sessions.read", "sessions.write", account_id="acct_other")
        response = client.post("/v1/sessions", json={"ephemeral": True}, headers=other)
        assert response.status_code == 201, response.text  # another account has its own quota

        assert client.delete(f"/v1/sessions/{a['id']}").json()["status"] == "terminated"
        c = h.session()  # terminating one freed a slot
        assert_error(client.post("/v1/sessions", json={"ephemeral": True}), 429, "quota_exceeded")
        assert {s["id"] for s in client.get("/v1/sessions").json()["sessions"]} == {b["id"], c["id"]}
    finally:
        h.close()


def test_reusing_a_workspace_session_is_not_refused(tmp_path):
    h = Harness(tmp_path, max_sessions_per_account=1)
    try:
        client = h.client
        client.post("/v1/workspaces", json={"name": "dev"})
        first = client.post("/v1/exec", json={"workspace": "dev", "command": "echo hi"})
        assert first.status_code == 200, first.text
        session_id = first.json()["session_id"]
        h.runtime.capacity_error = errors.CapacityExhausted("session limit 1 reached")
        again = client.post("/v1/exec", json={"workspace": "dev", "command": "echo again"})
        assert again.status_code == 200, again.text  # at the quota and over capacity, but no new VM
        assert again.json()["session_id"] == session_id and len(h.runtime.started) == 1
        # a create that would start a new VM is refused (quota first)
        assert_error(client.post("/v1/sessions", json={"ephemeral": True}), 429, "quota_exceeded")
    finally:
        h.close()


def test_capacity_is_checked_before_the_image_and_again_before_the_insert(harness):
    harness.session()
    assert harness.runtime.capacity_checks == 2


def test_openapi_documents_admission_errors(harness):
    paths = harness.client.get("/openapi.json").json()["paths"]
    for path in ("/v1/sessions", "/v1/exec"):
        responses = paths[path]["post"]["responses"]
        assert "quota_exceeded" in responses["429"]["description"]
        assert "capacity_exhausted" in responses["503"]["description"]
        assert "Retry-After" in responses["503"]["headers"]
