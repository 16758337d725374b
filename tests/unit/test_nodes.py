"""Nodes in the database (chaser/service/nodes.py) over the fake runtime: registration and identity,
node_id on sessions, cordon, node_lost, start-up recovery of its own node's sessions only, the admin
routes, /healthz and /readyz, the `chaser nodes` CLI."""

from __future__ import annotations

import json
import stat
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine
from typer.testing import CliRunner

from chaser.client import ChaserClient
from chaser.models.status import SessionStatus
from chaser.store import NodeRow, SessionRow
from chaser.store.tables import PERSONAL_ACCOUNT_ID, utcnow
from tests.support import assert_error
from tests.support.harness import Harness
from tests.support.wait import wait_until

FAST = {"node_heartbeat_s": 0.1, "node_lost_after_s": 1.0}


def ok(response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def add_node(harness: Harness, node_id: str, *, age_s: float = 0.0) -> None:
    """Another node's row, as another server sharing the database would have written it."""
    then = utcnow() - timedelta(seconds=age_s)
    with harness.services.db.session() as s:
        s.add(NodeRow(id=node_id, name=node_id, version="0", labels={}, capacity_vcpus=1, capacity_memory_mib=1,
                      capacity_disk_mib=1, capacity_sessions=1, status="active", last_heartbeat_at=then,
                      started_at=then, created_at=then))


def add_session(harness: Harness, session_id: str, *, node_id: str | None, status: str = "running") -> None:
    with harness.services.db.session() as s:
        s.add(SessionRow(id=session_id, account_id=PERSONAL_ACCOUNT_ID, status=status, ephemeral=True, env={},
                         image="debian", created_at=utcnow(), node_id=node_id))


def row_of(harness: Harness, session_id: str) -> SessionRow:
    with harness.services.db.session() as s:
        row = s.get(SessionRow, session_id)
        assert row is not None
        return row


@pytest.fixture
def harness(tmp_path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def test_a_server_registers_its_node_once_and_keeps_its_identity(tmp_path):
    first = Harness(tmp_path)
    try:
        node_id = (tmp_path / "home" / "node-id").read_text().strip()
        assert node_id.startswith("node_") and len(node_id) == len("node_") + 16
        assert stat.S_IMODE((tmp_path / "home" / "node-id").stat().st_mode) == 0o600
        [node] = ok(first.client.get("/v1/nodes"))["nodes"]
        assert node["id"] == node_id and node["current"] and node["status"] == "active" and not node["lost"]
        assert node["capacity"]["vcpus"] >= 1 and node["capacity"]["memory_mib"] > 0
        assert node["capacity"]["sessions"] >= 1 and node["sessions_running"] == 0
        assert 0 <= node["heartbeat_age_s"] < 60
        assert ok(first.client.get(f"/v1/nodes/{node_id}"))["id"] == node_id
        ok(first.client.post(f"/v1/nodes/{node_id}/cordon"))
    finally:
        first.close()
    again = Harness(tmp_path)  # a restart on the same home: the same node, still cordoned
    try:
        [node] = ok(again.client.get("/v1/nodes"))["nodes"]
        assert node["id"] == node_id and node["status"] == "cordoned"
    finally:
        again.close()


def test_sessions_record_their_node(harness):
    node_id = harness.services.nodes.id
    session = harness.session()
    assert session["node_id"] == node_id
    assert ok(harness.client.get(f"/v1/sessions/{session['id']}"))["node_id"] == node_id
    assert [row["node_id"] for row in ok(harness.client.get("/v1/sessions"))["sessions"]] == [node_id]
    assert ok(harness.client.get(f"/v1/nodes/{node_id}"))["sessions_running"] == 1


def test_a_cordoned_node_refuses_new_sessions_and_keeps_running_ones(harness):
    node_id = harness.services.nodes.id
    running = harness.session()
    cordoned = ok(harness.client.post(f"/v1/nodes/{node_id}/cordon"))
    assert cordoned["status"] == "cordoned"
    refused = assert_error(harness.client.post("/v1/sessions", json={"ephemeral": True}), 503, "node_cordoned")
    assert node_id in refused["message"]
    assert_error(harness.client.post(f"/v1/sessions/{running['id']}/fork", json={"count": 1}), 503, "node_cordoned")
    assert_error(harness.client.post("/v1/exec", json={"command": "true", "ephemeral": True}), 503, "node_cordoned")
    assert len(harness.runtime.started) == 1
    ran = ok(harness.client.post(f"/v1/sessions/{running['id']}/exec", json={"command": "echo hi"}))
    assert ran["exit_code"] == 0
    with harness.services.db.session() as s:  # draining refuses too
        s.get(NodeRow, node_id).status = "draining"
    assert_error(harness.client.post("/v1/sessions", json={"ephemeral": True}), 503, "node_cordoned")
    assert ok(harness.client.post(f"/v1/nodes/{node_id}/uncordon"))["status"] == "active"
    harness.session()
    events = ok(harness.client.get("/v1/audit/events", params={"resource_type": "node"}))["events"]
    assert [event["action"] for event in events] == ["node.uncordoned", "node.cordoned"]


def test_the_node_routes_are_for_admin_keys_only(harness):
    node_id = harness.services.nodes.id
    scoped = harness.key("sessions.read", "sessions.write", "keys.read", "audit.read")
    for method, path in (("GET", "/v1/nodes"), ("GET", f"/v1/nodes/{node_id}"),
                         ("POST", f"/v1/nodes/{node_id}/cordon"), ("POST", f"/v1/nodes/{node_id}/uncordon")):
        assert_error(harness.client.request(method, path, headers=scoped), 403, "forbidden")
        assert_error(harness.client.request(method, path, headers={"Authorization": "Bearer sk_nope"}),
                     401, "unauthorized")
    assert_error(harness.client.get("/v1/nodes/node_nope"), 404, "node_not_found")
    assert_error(harness.client.post("/v1/nodes/node_nope/cordon"), 404, "node_not_found")
    assert ok(harness.client.get(f"/v1/nodes/{node_id}"))["status"] == "active"  # nothing changed


def test_a_node_that_stops_heartbeating_is_lost_and_its_sessions_fail(tmp_path):
    harness = Harness(tmp_path, **FAST)
    try:
        add_node(harness, "node_dead", age_s=0)
        add_session(harness, "ses_dead_running", node_id="node_dead")
        add_session(harness, "ses_dead_paused", node_id="node_dead", status="paused")
        add_session(harness, "ses_dead_ended", node_id="node_dead", status="terminated")
        add_session(harness, "ses_nobodys", node_id=None)
        mine = harness.session()

        def dead_is_lost() -> bool:
            return ok(harness.client.get("/v1/nodes/node_dead"))["lost"]

        wait_until(dead_is_lost, timeout=10, message="node_dead marked lost")
        for session_id in ("ses_dead_running", "ses_dead_paused"):
            row = row_of(harness, session_id)
            assert (row.status, row.end_reason) == ("failed", "node_lost") and "node_dead" in row.failure_message
        assert row_of(harness, "ses_dead_ended").status == "terminated"  # ended before: untouched
        assert row_of(harness, "ses_nobodys").status == "running"  # no node: not node_dead's
        assert ok(harness.client.get(f"/v1/sessions/{mine['id']}"))["status"] == "running"
        [me] = [node for node in ok(harness.client.get("/v1/nodes"))["nodes"] if node["current"]]
        assert not me["lost"] and me["heartbeat_age_s"] < 1.0  # its own heartbeat goes on
        harness.run(harness.services.audit.flush)
        events = ok(harness.client.get("/v1/audit/events", params={"limit": 100}))["events"]
        lost = [event for event in events if event["action"] == "node.lost"]
        assert [event["resource_id"] for event in lost] == ["node_dead"] and lost[0]["actor_type"] == "system"
        assert lost[0]["metadata"]["sessions"] == 2
        failed = {event["resource_id"] for event in events if event["action"] == "session.failed"}
        assert failed == {"ses_dead_running", "ses_dead_paused"}
        # Marking again finds nothing: the guard (lost_at unset) matched once.
        assert harness.services.nodes.mark_lost() == []
    finally:
        harness.close()
    # The lost node comes back (a server with its identity starts): it is no longer lost.
    home = tmp_path / "back" / "home"
    home.mkdir(parents=True)
    (home / "node-id").write_text("node_dead\n")
    back = Harness(tmp_path / "back", database_url=harness.settings.effective_database_url, **FAST)
    try:
        node = ok(back.client.get("/v1/nodes/node_dead"))
        assert node["current"] and not node["lost"] and node["status"] == "active"
        assert row_of(back, "ses_dead_running").end_reason == "node_lost"  # what ended stays ended
    finally:
        back.close()


def test_a_node_marked_lost_while_alive_stops_what_the_database_ended(tmp_path):
    harness = Harness(tmp_path, **FAST)
    try:
        session = harness.session()
        vm = harness.vm(session["id"])
        with harness.services.db.session() as s:  # what another server's sweep did while this one stalled
            s.get(NodeRow, harness.services.nodes.id).lost_at = utcnow()
            row = s.get(SessionRow, session["id"])
            row.status, row.end_reason, row.ended_at = SessionStatus.FAILED, "node_lost", utcnow()
        wait_until(lambda: session["id"] not in harness.services.sessions.live, timeout=10,
                   message="the session's VM stopped")
        assert not vm.alive
        assert not ok(harness.client.get(f"/v1/nodes/{harness.services.nodes.id}"))["lost"]
        assert ok(harness.client.get(f"/v1/sessions/{session['id']}"))["end_reason"] == "node_lost"
        # Terminated through another server sharing the database: its VM here stops too, the row as it was.
        other = harness.session()
        other_vm = harness.vm(other["id"])
        with harness.services.db.session() as s:
            row = s.get(SessionRow, other["id"])
            row.status, row.end_reason, row.ended_at = SessionStatus.TERMINATED, "terminated", utcnow()
        wait_until(lambda: not other_vm.alive, timeout=10, message="the terminated session's VM stopped")
        ended = ok(harness.client.get(f"/v1/sessions/{other['id']}"))
        assert (ended["status"], ended["end_reason"]) == ("terminated", "terminated")
    finally:
        harness.close()


def test_start_up_recovery_ends_only_this_nodes_sessions(tmp_path):
    first = Harness(tmp_path / "first")
    url = first.settings.effective_database_url
    try:
        add_node(first, "node_other")
        add_session(first, "ses_other", node_id="node_other")
        add_session(first, "ses_legacy", node_id=None)  # from before nodes: whose is unknown
        add_session(first, "ses_mine", node_id=first.services.nodes.id)
    finally:
        first.close()
    again = Harness(tmp_path / "first", database_url=url)
    try:
        assert (row_of(again, "ses_mine").status, row_of(again, "ses_mine").end_reason) == (
            "terminated", "server_restart")
        assert row_of(again, "ses_other").status == "running"  # another server's
        assert row_of(again, "ses_legacy").status == "running"  # another node exists: maybe its
    finally:
        again.close()


def test_start_up_recovery_of_the_only_node_ends_sessions_from_before_nodes(tmp_path):
    first = Harness(tmp_path)
    try:
        add_session(first, "ses_legacy", node_id=None)
    finally:
        first.close()
    again = Harness(tmp_path)
    try:
        assert (row_of(again, "ses_legacy").status, row_of(again, "ses_legacy").end_reason) == (
            "terminated", "server_restart")
    finally:
        again.close()


def test_healthz_and_readyz(harness):
    for path in ("/health", "/healthz"):
        assert harness.client.get(path, headers={"Authorization": ""}).json() == {"status": "ok"}
    assert ok(harness.client.get("/readyz", headers={"Authorization": ""})) == {"status": "ready"}
    harness.services.db.engine = create_engine("sqlite:////nonexistent-dir/chaser.db")
    answer = assert_error(harness.client.get("/readyz"), 503, "not_ready")
    assert "database" in answer["message"]


def test_the_nodes_cli(harness, monkeypatch):
    from chaser.cli import main
    from chaser.cli.commands import nodes as nodes_cli

    def through_the_app(request: httpx.Request) -> httpx.Response:
        answer = harness.client.request(request.method, str(request.url), headers=dict(request.headers),
                                        content=request.content)
        return httpx.Response(answer.status_code, content=answer.content,
                              headers={"content-type": answer.headers.get("content-type", "application/json")})

    monkeypatch.setattr(nodes_cli, "make_client", lambda: ChaserClient(
        "http://testserver", harness.admin_key, transport=httpx.MockTransport(through_the_app)))
    node_id = harness.services.nodes.id
    runner = CliRunner()
    listed = runner.invoke(main.app, ["nodes", "list"])
    assert listed.exit_code == 0, listed.output
    assert node_id in listed.stdout and "active" in listed.stdout and "(this)" in listed.stdout
    as_json = json.loads(runner.invoke(main.app, ["nodes", "list", "--json"]).stdout)
    assert [node["id"] for node in as_json["nodes"]] == [node_id]
    cordoned = runner.invoke(main.app, ["nodes", "cordon", node_id])
    assert cordoned.exit_code == 0 and "cordoned" in cordoned.stdout
    assert "cordoned" in runner.invoke(main.app, ["nodes", "list"]).stdout
    assert json.loads(runner.invoke(main.app, ["nodes", "uncordon", node_id, "--json"]).stdout)["status"] == "active"
    missing = runner.invoke(main.app, ["nodes", "cordon", "node_nope"])
    assert missing.exit_code == 1 and "node_not_found" in missing.stderr


def test_node_labels_are_checked_and_merged_with_the_command_line(tmp_path, monkeypatch, capsys):
    from pydantic import ValidationError

    from chaser.cli.commands.server import node_settings
    from chaser.config import Settings

    with pytest.raises(ValidationError, match="node label"):
        Settings(home=tmp_path, node_labels={"bad key": "x"})
    with pytest.raises(ValidationError, match="node label"):
        Settings(home=tmp_path, node_labels={"zone": "a" * 64})
    monkeypatch.setenv("CHASER_NODE_TOKEN", "a-node-token-of-enough-length")
    monkeypatch.setenv("CHASER_NODE_LABELS", '{"zone": "a", "disk": "hdd"}')
    settings = node_settings("postgresql+psycopg://u:p@127.0.0.1/db", "http://127.0.0.2:8081", None, tmp_path,
                             None, None, ["disk=ssd", "kvm="])
    assert settings.node_labels == {"zone": "a", "disk": "ssd", "kvm": ""}
    with pytest.raises(SystemExit):
        node_settings("postgresql+psycopg://u:p@127.0.0.1/db", "http://127.0.0.2:8081", None, tmp_path,
                      None, None, ["no-equals-sign"])
    assert "KEY=VALUE" in capsys.readouterr().err


def test_a_start_removes_cut_moves_and_copies_that_moved_away_only(harness):
    from chaser.store import NodeRow, Workspace
    from chaser.store.tables import utcnow

    services, base = harness.services, harness.settings.workspaces_dir
    now = utcnow()
    with services.db.session() as s:
        s.add(NodeRow(id="node_0ther", name="other", version="x", labels={}, capacity_vcpus=1,
                      capacity_memory_mib=1, capacity_disk_mib=1, capacity_sessions=1, status="active",
                      last_heartbeat_at=now, started_at=now))
        for workspace_id, node_id in (("ws_a1", "node_0ther"), ("ws_b2", services.nodes.id), ("ws_d4", None)):
            s.add(Workspace(id=workspace_id, account_id="personal", name=workspace_id, template=False,
                            node_id=node_id))
    for name in (".incoming-ws_a1-0123", "ws_a1", "ws_b2", "ws_c3", "ws_d4"):
        (base / name).mkdir(parents=True)
        (base / name / "disk.img").write_bytes(b"x")
    services.mover.remove_leftovers()
    # Moved away: removed. Its own, one of no node, one with no row (maybe the only copy): kept.
    assert sorted(path.name for path in base.iterdir()) == ["ws_b2", "ws_c3", "ws_d4"]


def test_a_single_server_moves_a_workspace_only_to_itself(harness):
    """One server, no other node: a move to itself places the workspace here (its row only); any
    other node is unknown; the route is for admin keys; bad bodies are refused."""
    node_id = harness.services.nodes.id
    admin = {"Authorization": f"Bearer {harness.admin_key}"}
    workspace = ok(harness.client.post("/v1/workspaces", json={"name": "here"}, headers=admin))
    assert workspace["node_id"] is None
    moved = ok(harness.client.post("/v1/workspaces/here/move", json={"node_id": node_id}, headers=admin))
    assert moved == {**moved, "workspace_id": workspace["id"], "node_id": node_id, "moved": False}
    assert ok(harness.client.get("/v1/workspaces/here", headers=admin))["node_id"] == node_id
    again = ok(harness.client.post("/v1/workspaces/here/move", json={"node_id": node_id}, headers=admin))
    assert again["moved"] is False and again["from_node_id"] == node_id
    unknown = harness.client.post("/v1/workspaces/here/move", json={"node_id": "node_0000"}, headers=admin)
    assert unknown.status_code == 404 and unknown.json()["code"] == "node_not_found"
    for body in ({}, {"node_id": "here"}, {"node_id": node_id, "force": True}, {"node_id": 7}):
        refused = harness.client.post("/v1/workspaces/here/move", json=body, headers=admin)
        assert refused.status_code == 400 and set(refused.json()) == {"code", "message"}, refused.text
    scoped = harness.key("workspaces.read", "workspaces.write")
    forbidden = harness.client.post("/v1/workspaces/here/move", json={"node_id": node_id}, headers=scoped)
    assert forbidden.status_code == 403 and forbidden.json()["code"] == "forbidden"
    drained = ok(harness.client.post(f"/v1/nodes/{node_id}/drain", headers=admin))
    assert drained["node"]["status"] == "draining" and drained["moved"] == 0 and drained["kept"] == 1
    assert "no node accepts" in drained["workspaces"][0]["error"]  # nowhere else to go
