"""The audit log (`GET /v1/audit/events`, chaser/service/audit.py) over the fake runtime:
who did what for every kind of event, paging, the `audit.read` scope, accounts, retention,
validation, and that recording never fails a request."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import text

from chaser.store.tables import utcnow
from tests.support.api import assert_error
from tests.support.wait import wait_until


def events(harness, **params) -> list[dict]:
    response = harness.client.get("/v1/audit/events", params=params)
    assert response.status_code == 200, response.text
    return response.json()["events"]


def actions(harness, **params) -> list[str]:
    return [event["action"] for event in events(harness, **params)]


def admin_key_id(harness) -> str:
    return next(key["id"] for key in harness.client.get("/v1/keys").json()["keys"] if key["name"] == "admin")


def test_each_kind_of_event_names_who_did_what(harness):
    admin = admin_key_id(harness)
    sid = harness.session()["id"]
    harness.client.post(f"/v1/sessions/{sid}/exec", json={"command": "echo hi", "env": {"TOKEN": "hunter2-env"}})
    background = harness.client.post(f"/v1/sessions/{sid}/exec", json={"command": "sleep 30", "background": True})
    upload = harness.client.post(f"/v1/sessions/{sid}/upload", data={"path": "/workspace/a.txt"},
                                 files={"file": ("a.txt", b"secret-file-content")})
    assert upload.status_code == 200, upload.text
    assert harness.client.get(f"/v1/sessions/{sid}/download", params={"path": "/workspace/a.txt"}).status_code == 200
    assert harness.client.post(f"/v1/sessions/{sid}/ports/3000/public", json={"public": True}).status_code == 200
    created = harness.client.post("/v1/keys", json={"name": "ci", "scopes": ["sessions.read"]}).json()
    harness.client.delete(f"/v1/keys/{created['id']}")
    harness.client.delete(f"/v1/keys/{created['id']}")  # already revoked: nothing new to record
    harness.client.post("/v1/workspaces", json={"name": "dev"})
    assert harness.client.put("/v1/workspaces/dev/name", json={"name": "dev2"}).status_code == 200
    snapshot = harness.client.post("/v1/workspaces/dev2/snapshots", json={"name": "s1"}).json()
    assert harness.client.post(f"/v1/workspaces/dev2/snapshots/{snapshot['id']}/restore", json={}).status_code == 200
    harness.client.delete(f"/v1/workspaces/dev2/snapshots/{snapshot['id']}")
    harness.client.delete("/v1/workspaces/dev2")
    harness.client.delete(f"/v1/sessions/{sid}")

    log = list(reversed(events(harness)))  # oldest first
    by_action: dict[str, list[dict]] = {}
    for event in log:
        by_action.setdefault(event["action"], []).append(event)
    assert [e["action"] for e in log if e["actor_id"] == admin] == [
        "session.created", "command.exec", "command.exec", "file.upload", "file.download", "port.public", "key.created", "key.revoked", "workspace.created", "workspace.renamed",
        "snapshot.created", "snapshot.restored", "snapshot.deleted", "workspace.deleted", "session.terminated"]
    for event in log:
        assert event["account_id"] == "personal" and event["status"] == "success"
        if event["actor_id"] == admin:
            assert (event["actor_type"], event["client_address"]) == ("api_key", "testclient"), event
    sync, bg = by_action["command.exec"]
    assert (sync["resource_type"], sync["resource_id"]) == ("session", sid)
    assert sync["metadata"]["command"] == "echo hi" and sync["metadata"]["exit_code"] == 0
    assert bg["metadata"]["background"] is True and bg["metadata"]["command_id"] == background.json()["command_id"]
    assert {k: by_action["file.upload"][0]["metadata"][k] for k in ("path", "size")} == {
        "path": "/workspace/a.txt", "size": 19}
    assert {k: by_action["file.download"][0]["metadata"][k] for k in ("path", "size")} == {
        "path": "/workspace/a.txt", "size": 19}
    assert by_action["port.public"][0]["metadata"] == {"port": 3000}
    assert by_action["key.created"][-1]["resource_id"] == created["id"]
    assert by_action["key.created"][-1]["metadata"]["scopes"] == ["sessions.read"]
    assert len(by_action["key.revoked"]) == 1 and by_action["key.revoked"][0]["resource_id"] == created["id"]
    assert by_action["workspace.renamed"][0]["metadata"] == {"old_name": "dev", "name": "dev2"}
    assert by_action["snapshot.created"][0]["resource_id"] == snapshot["id"]
    assert by_action["session.terminated"][-1]["metadata"] == {"end_reason": "terminated"}
    # The key that the harness made at start-up: created by the server itself.
    first = log[0]
    assert (first["action"], first["actor_type"], first["actor_id"], first["resource_id"]) == (
        "key.created", "system", "server", admin)
    # Never a secret: no env value, file content or API key.
    dumped = json.dumps(log)
    for secret in ("hunter2-env", "secret-file-content", created["key"], harness.admin_key):
        assert secret not in dumped


class Served:
    """The whole server over the fake runtime behind uvicorn on 127.0.0.1 (real HTTP and WebSockets)."""

    def __init__(self, tmp_path) -> None:
        import threading

        import httpx
        import uvicorn

        from chaser.assembly import create_app
        from tests.support import FakeRuntime
        from tests.support.harness import make_settings
        from tests.support.net import free_port

        self.app = create_app(make_settings(tmp_path), FakeRuntime(), reaper_interval=3600)
        self.key = self.app.state.services.keys.create(name="admin", full_access=True).key
        self.port = free_port()
        # The fake terminal never prints exec mode's start marker, so that bridge only ends at shutdown.
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), 20, message="uvicorn did not start")
        assert self.server.started
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30,
                                 headers={"Authorization": f"Bearer {self.key}"})

    def pty(self, session_id: str, query: str = ""):
        from websockets.sync.client import connect

        return connect(f"ws://127.0.0.1:{self.port}/v1/sessions/{session_id}/pty{query}",
                       additional_headers={"Authorization": f"Bearer {self.key}"})

    def events(self, **params) -> list[dict]:
        response = self.http.get("/v1/audit/events", params=params)
        assert response.status_code == 200, response.text
        return response.json()["events"]

    def close(self) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def served(tmp_path):
    server = Served(tmp_path)
    yield server
    server.close()


def test_pty_opened_over_a_real_websocket(served):
    sid = served.http.post("/v1/sessions", json={"ephemeral": True}).json()["id"]
    key_id = served.events(action="session.created")[0]["actor_id"]
    with served.pty(sid, "?mode=agent&rows=30&cols=100") as ws:
        ws.send(b"echo\n")
        assert ws.recv(10) == b"echo\n"  # the fake terminal echoes: the bridge is up
        opened = wait_until(lambda: served.events(action="pty.opened"), 10, message="no pty.opened event")
    assert (opened[0]["actor_id"], opened[0]["client_address"], opened[0]["resource_id"]) == (key_id, "127.0.0.1", sid)
    assert opened[0]["metadata"] == {"mode": "agent", "rows": 30, "cols": 100}
    with served.pty(sid, "?mode=exec") as ws:
        ws.send(json.dumps({"type": "exec", "command": "echo from-pty", "env": {"K": "pty-secret"}}))
        found = wait_until(lambda: [e for e in served.events(action="pty.opened") if e["metadata"]["mode"] == "exec"],
                           10, message="no exec-mode pty.opened event")
    assert found[0]["metadata"] == {"mode": "exec", "rows": 24, "cols": 80, "command": "echo from-pty",
                                    "command_truncated": False}
    assert "pty-secret" not in json.dumps(served.events(limit=1000))


def test_a_long_command_line_is_cut_to_4_kib(harness):
    sid = harness.session()["id"]
    command = "echo " + "é" * 5000  # 10 005 bytes of UTF-8
    assert harness.client.post(f"/v1/sessions/{sid}/exec", json={"command": command}).status_code == 200
    event = events(harness, action="command.exec")[0]
    recorded = event["metadata"]["command"]
    assert event["metadata"]["command_truncated"] is True
    assert len(recorded.encode()) <= 4096 and command.startswith(recorded) and len(recorded.encode()) > 4090


def test_failures_and_ends_nobody_asked_for(harness):
    admin = admin_key_id(harness)
    sid = harness.session()["id"]
    response = harness.client.post(f"/v1/sessions/{sid}/exec", json={"command": "echo", "cwd": "/nowhere"})
    assert response.status_code == 400
    failed_exec = events(harness, action="command.exec")[0]
    assert failed_exec["status"] == "failure" and failed_exec["actor_id"] == admin
    assert failed_exec["metadata"]["error"] == response.json()["code"]

    harness.vm(sid).crash()
    harness.run(harness.services.reaper.reap_once)
    crash = events(harness, resource_id=sid, action="session.failed")[0]
    assert (crash["actor_type"], crash["actor_id"], crash["status"]) == ("system", "server", "failure")
    assert crash["metadata"]["end_reason"] == "vm_crashed"

    idle = harness.session()["id"]
    harness.services.sessions.live[idle].last_activity -= harness.settings.session_idle_timeout_s + 1
    harness.run(harness.services.reaper.reap_once)
    ended = events(harness, resource_id=idle, action="session.terminated")[0]
    assert (ended["actor_type"], ended["metadata"]) == ("system", {"end_reason": "idle_timeout"})


def test_a_crash_noticed_by_a_request_is_the_servers_doing(harness):
    sid = harness.session()["id"]
    harness.vm(sid).crash()
    assert harness.client.post(f"/v1/sessions/{sid}/exec", json={"command": "echo"}).status_code == 503
    crash = events(harness, action="session.failed")[0]
    assert crash["actor_type"] == "system" and crash["resource_id"] == sid


def test_a_session_left_running_by_an_earlier_server_is_recorded_on_restart(make_harness, tmp_path):
    first = make_harness(path=tmp_path / "same")
    sid = first.session()["id"]
    first.services.sessions.live.pop(sid)  # as if the server had died: the row says running, no VM of its own
    first.close()
    second = make_harness(path=tmp_path / "same")
    ended = events(second, resource_id=sid, action="session.terminated")
    assert ended and ended[0]["actor_type"] == "system" and ended[0]["metadata"] == {"end_reason": "server_restart"}


def test_pages_with_before_and_limit_are_stable(harness):
    sid = harness.session()["id"]
    for n in range(7):
        harness.client.post(f"/v1/sessions/{sid}/exec", json={"command": f"echo {n}"})
    everything = events(harness, limit=1000)
    ids = [int(event["id"].removeprefix("aud_")) for event in everything]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)  # newest first, unique
    pages, before = [], None
    while True:
        page = events(harness, limit=3, **({"before": before} if before else {}))
        if not page:
            break
        assert len(page) <= 3
        pages.append(page)
        before = page[-1]["id"]
        harness.client.post(f"/v1/sessions/{sid}/exec", json={"command": "echo newer"})  # new events: no shift
    assert [event for page in pages for event in page] == everything
    assert events(harness, limit=2)[0]["metadata"]["command"] == "echo newer"
    execs = events(harness, action="command.exec", limit=1000)
    assert len(execs) == 7 + len(pages) and all(event["action"] == "command.exec" for event in execs)
    assert events(harness, before="aud_1") == []


def test_query_validation(harness):
    for params in ({"before": "garbage"}, {"before": "aud_"}, {"before": "aud_-1"}, {"before": "1"},
                   {"before": "aud_" + "9" * 30}, {"limit": 0}, {"limit": 1001}, {"limit": "many"}):
        assert_error(harness.client.get("/v1/audit/events", params=params), 400, "invalid_request")
    assert harness.client.get("/v1/audit/events", params={"before": "aud_999999", "limit": 1000}).status_code == 200


def test_the_audit_read_scope_and_accounts(harness):
    harness.session()
    assert_error(harness.client.get("/v1/audit/events", headers=harness.key("sessions.read", "keys.read")),
                 403, "forbidden")
    assert_error(harness.client.get("/v1/audit/events", headers={"Authorization": ""}), 401, "unauthorized")
    reader = harness.client.get("/v1/audit/events", headers=harness.key("audit.read"))
    assert reader.status_code == 200 and "session.created" in [e["action"] for e in reader.json()["events"]]
    # A key can be made with the scope (a full-access key may grant it).
    made = harness.client.post("/v1/keys", json={"scopes": ["audit.read"]})
    assert made.status_code == 200 and made.json()["scopes"] == ["audit.read"]
    # Another account sees its own events only.
    other = harness.key("audit.read", "sessions.write", account_id="acme")
    assert harness.client.post("/v1/sessions", json={"ephemeral": True}, headers=other).status_code == 201
    theirs = harness.client.get("/v1/audit/events", headers=other).json()["events"]
    assert theirs and {event["account_id"] for event in theirs} == {"acme"}
    assert "acme" not in {event["account_id"] for event in events(harness, limit=1000)}


def test_retention_pruning(make_harness):
    harness = make_harness(audit_retention_days=30)
    sid = harness.session()["id"]
    harness.client.post(f"/v1/sessions/{sid}/exec", json={"command": "echo old"})
    before = events(harness, limit=1000)
    audit = harness.services.audit
    assert harness.run(audit.prune) == 0  # nothing is 30 days old yet
    assert harness.run(lambda: audit.prune(utcnow() + timedelta(days=29))) == 0
    pruned = harness.run(lambda: audit.prune(utcnow() + timedelta(days=31)))
    assert pruned == len(before) and events(harness) == []
    # Ids are never reused once pruned: a cursor from before still means "older than".
    harness.client.post(f"/v1/sessions/{sid}/exec", json={"command": "echo new"})
    newest = events(harness)
    assert int(newest[0]["id"].removeprefix("aud_")) > int(before[0]["id"].removeprefix("aud_"))
    # `prune_if_due` (the reaper's) prunes at most hourly.
    assert harness.run(audit.prune_if_due) == 0
    assert harness.run(audit.prune_if_due) == 0 and audit._last_prune


def test_zero_retention_keeps_everything(make_harness):
    harness = make_harness(audit_retention_days=0)
    harness.session()
    assert harness.run(lambda: harness.services.audit.prune(utcnow() + timedelta(days=10_000))) == 0
    assert events(harness)


def test_recording_never_fails_the_request(harness, caplog):
    sid = harness.session()["id"]
    with harness.services.db.engine.begin() as connection:
        connection.execute(text("DROP TABLE audit_events"))
    response = harness.client.post(f"/v1/sessions/{sid}/exec", json={"command": "echo still-works"})
    assert response.status_code == 200 and response.json()["output"] == "still-works\n"
    assert harness.client.post("/v1/keys", json={"name": "x"}).status_code == 200
    harness.run(harness.services.audit.flush)
    assert any("audit" in record.getMessage() and "could not" in record.getMessage() for record in caplog.records)


def test_openapi_documents_the_route(harness):
    operation = harness.client.get("/openapi.json").json()["paths"]["/v1/audit/events"]["get"]
    assert {"200", "400", "401", "403"} <= set(operation["responses"])
    names = {parameter["name"] for parameter in operation["parameters"]}
    assert names == {"before", "limit", "action", "resource_type", "resource_id", "status"}
    for status in ("400", "401", "403"):
        assert operation["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith(
            "ErrorPublic")


@pytest.mark.parametrize("limit", [1, 1000])
def test_limit_bounds_are_accepted(harness, limit):
    harness.session()
    assert len(events(harness, limit=limit)) == min(limit, len(events(harness, limit=1000)))
