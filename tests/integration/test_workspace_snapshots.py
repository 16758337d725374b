"""Workspace snapshots, clones, rename/template and bulk delete end to end: a real
`chaser server`, real microVMs (three boots), the official chaser-sdk client."""

from __future__ import annotations

import httpx
import pytest
from chaser_sdk import ChaserClient
from chaser_sdk.errors import ChaserApiError

from tests.integration.conftest import ServerProcess

pytestmark = pytest.mark.vm


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code, response.text
    assert set(response.json()) == {"code", "message"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("chaser-snapshots")
    srv = ServerProcess(home=base / "home", config_file=base / "config.json",
                        extra_env={"CHASER_WARM_POOL_SIZE": "0"}).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def sdk(server) -> ChaserClient:
    return ChaserClient(base_url=server.url, api_key=server.api_key, timeout=300)


@pytest.fixture(scope="module")
def http(server):
    with server.client() as client:
        yield client


def run(sdk: ChaserClient, session_id: str, command: str) -> str:
    result = sdk.exec.in_session(session_id, command=command)
    assert result["exit_code"] == 0, result
    return result["output"]


def test_snapshots_restore_clone_and_bulk_delete(sdk, http, server):
    ws = sdk.workspaces.create(name="snapdev", session_type="sandbox")
    workspace_dir = server.home / "workspaces" / ws["id"]

    # Boot 1: write a file, snapshot while the session runs (guest sync + QMP stop/cont).
    first = sdk.sessions.create(session_type="sandbox", workspace="snapdev")
    run(sdk, first["id"], "echo original > /workspace/f.txt")  # no sync: the snapshot must do it
    live_snap = sdk.workspaces.snapshots.create("snapdev", name="live")
    assert live_snap["id"].startswith("snap_") and live_snap["workspace_id"] == ws["id"]
    assert live_snap["used_bytes"] > 0 and live_snap["created_at"]
    snap_file = workspace_dir / "snapshots" / f"{live_snap['id']}.img"
    assert snap_file.stat().st_blocks * 512 == live_snap["used_bytes"]
    assert snap_file.stat().st_blocks * 512 < snap_file.stat().st_size  # sparse
    # The VM resumed and keeps working after the freeze.
    run(sdk, first["id"], "echo changed > /workspace/f.txt && echo extra > /workspace/g.txt")
    assert_error(http.post(f"/v1/workspaces/snapdev/snapshots/{live_snap['id']}/restore"), 409, "workspace_busy")
    sdk.sessions.terminate(first["id"])  # graceful: the guest flushes the disk

    # Offline snapshot of the changed state, then restore the live one.
    offline_snap = sdk.workspaces.snapshots.create("snapdev")
    assert [s["id"] for s in sdk.workspaces.snapshots.list("snapdev")] == [live_snap["id"], offline_snap["id"]]
    restored = sdk.workspaces.snapshots.restore("snapdev", live_snap["id"])
    assert restored["id"] == live_snap["id"] and restored["restored_at"]

    # Boot 2: the restored disk has the file as it was at the snapshot.
    second = sdk.sessions.create(session_type="sandbox", workspace="snapdev")
    assert run(sdk, second["id"], "cat /workspace/f.txt") == "original\n"
    assert run(sdk, second["id"], "ls /workspace").split() == ["f.txt"]
    # force: the running session is terminated, then the disk replaced.
    sdk.workspaces.snapshots.restore("snapdev", offline_snap["id"], force=True)
    ended = sdk.sessions.get(second["id"])
    assert ended["status"] == "terminated" and ended["end_reason"] == "snapshot_restored"

    # Rename and template with the SDK; clone the template.
    assert sdk.workspaces.rename("snapdev", "golden") == {"id": ws["id"], "name": "golden"}
    assert sdk.workspaces.set_template("golden", True) == {"id": ws["id"], "template": True}
    assert sdk.workspaces.rename("golden", None) == {"id": ws["id"], "name": None}
    assert sdk.workspaces.rename(ws["id"], "golden")["name"] == "golden"
    clone = sdk.workspaces.create(name="from-golden", clone_from="golden")
    assert clone["id"] != ws["id"] and clone["source_workspace_id"] == ws["id"] and clone["template"] is False

    # Boot 3: the clone sees the template's files (the offline snapshot's state).
    third = sdk.sessions.create(session_type="sandbox", workspace="from-golden")
    assert run(sdk, third["id"], "cat /workspace/f.txt /workspace/g.txt") == "changed\nextra\n"
    run(sdk, third["id"], "echo mine > /workspace/f.txt")
    with pytest.raises(ChaserApiError) as caught:
        sdk.workspaces.snapshots.restore("from-golden", offline_snap["id"])  # not this workspace's
    assert caught.value.status == 404

    # Deleting a snapshot; bulk delete (force: the clone's session is running).
    sdk.workspaces.snapshots.delete("golden", live_snap["id"])
    assert not snap_file.exists()
    assert [s["id"] for s in sdk.workspaces.snapshots.list("golden")] == [offline_snap["id"]]
    assert_error(http.delete(f"/v1/workspaces/golden/snapshots/{live_snap['id']}"), 404, "snapshot_not_found")
    result = sdk.workspaces.bulk_delete({"ids": ["golden", "from-golden", "nope"], "force": True})
    assert result["requested"] == 3 and result["deleted"] == 2 and result["failed"] == 1
    assert {r["id"] for r in result["results"] if r["deleted"]} == {ws["id"], clone["id"]}
    assert sdk.sessions.get(third["id"])["status"] == "terminated"
    assert not workspace_dir.exists() and not (server.home / "workspaces" / clone["id"]).exists()
    assert [w for w in sdk.workspaces.list() if w["id"] in (ws["id"], clone["id"])] == []


def test_workspace_that_never_ran(sdk, http):
    """No VM: a workspace without a disk yet can be snapshotted and cloned (both empty)."""
    template = sdk.workspaces.create(name="empty-tpl", template=True)
    snapshot = sdk.workspaces.snapshots.create("empty-tpl")
    assert snapshot["used_bytes"] == 0
    clone = sdk.workspaces.create(clone_from="empty-tpl")
    assert clone["image"] == template["image"] and clone["source_workspace_id"] == template["id"]
    assert sdk.workspaces.snapshots.restore("empty-tpl", snapshot["id"])["restored_at"]
    assert_error(http.post("/v1/workspaces", json={"clone_from": "missing"}), 404, "workspace_not_found")
    assert_error(http.put("/v1/workspaces/empty-tpl/name", json={"name": "bad name"}), 400, "invalid_request")
    result = sdk.workspaces.bulk_delete({"ids": ["empty-tpl", clone["id"]]})
    assert result["deleted"] == 2 and result["failed"] == 0
