"""Workspace rename/template/bulk-delete, clone_from and snapshots over the fake runtime."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaser.diskcopy import _python_sparse_copy, copy_disk
from tests.support import assert_error

MIB = 1 << 20


def write_disk(path: Path, payload: bytes, *, size: int = 64 * MIB, offset: int = 8 * MIB) -> None:
    """A sparse stand-in for disk.img: `payload` at `offset`, holes elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(size)
        handle.seek(offset)
        handle.write(payload)


def read_disk(path: Path, length: int, *, offset: int = 8 * MIB) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def disk(harness, workspace_id: str) -> Path:
    return harness.services.workspaces.disk_path(workspace_id)


def files_at_thaw(vm, directory: Path, pattern: str) -> list[list[str]]:
    """At each thaw of `vm`, the files under `directory` matching `pattern` (what was copied while frozen)."""
    seen: list[list[str]] = []
    vm.on_thaw = lambda: seen.append(sorted(str(p.relative_to(directory)) for p in directory.glob(pattern)))
    return seen


# --- copy helper -------------------------------------------------------------

@pytest.mark.parametrize("copier", [copy_disk, _python_sparse_copy])
def test_copy_keeps_content_and_holes(tmp_path, copier):
    src, dst = tmp_path / "src.img", tmp_path / "out" / "dst.img"
    write_disk(src, b"hello" * 1000)
    dst.parent.mkdir()
    copier(src, dst)
    assert dst.stat().st_size == src.stat().st_size
    assert read_disk(dst, 5000) == b"hello" * 1000
    assert dst.stat().st_blocks * 512 <= 2 * MIB  # still sparse
    assert not [p for p in dst.parent.iterdir() if p.name != "dst.img"]  # no temporary left


# --- rename / template ---------------------------------------------------------

def test_rename_and_template(harness):
    client = harness.client
    ws = client.post("/v1/workspaces", json={"name": "dev"}).json()
    client.post("/v1/workspaces", json={"name": "other"})
    assert client.put("/v1/workspaces/dev/name", json={"name": "prod"}).json() == {"id": ws["id"], "name": "prod"}
    assert client.get("/v1/workspaces/prod").json()["id"] == ws["id"]
    assert_error(client.get("/v1/workspaces/dev"), 404, "workspace_not_found")
    assert_error(client.put("/v1/workspaces/prod/name", json={"name": "other"}), 409, "workspace_exists")
    assert_error(client.put("/v1/workspaces/prod/name", json={"name": "bad name"}), 400, "invalid_request")
    assert_error(client.put("/v1/workspaces/prod/name", json={"name": "ws_0123abcd"}), 400, "invalid_request")
    assert_error(client.put("/v1/workspaces/prod/name", json={}), 400, "invalid_request")
    assert_error(client.put("/v1/workspaces/nope/name", json={"name": "x"}), 404, "workspace_not_found")
    # A running session sees the new name.
    session = client.post("/v1/sessions", json={"workspace": "prod"}).json()
    client.put(f"/v1/workspaces/{ws['id']}/name", json={"name": "renamed"})
    assert harness.services.sessions.live[session["id"]].workspace_name == "renamed"
    # null clears the name; the id still works.
    assert client.put(f"/v1/workspaces/{ws['id']}/name", json={"name": None}).json() == {"id": ws["id"], "name": None}
    assert client.get(f"/v1/workspaces/{ws['id']}").json()["name"] is None

    assert client.put(f"/v1/workspaces/{ws['id']}/template", json={"template": True}).json() == {
        "id": ws["id"], "template": True}
    assert client.get(f"/v1/workspaces/{ws['id']}").json()["template"] is True
    assert client.put(f"/v1/workspaces/{ws['id']}/template", json={"template": False}).json()["template"] is False
    assert_error(client.put(f"/v1/workspaces/{ws['id']}/template", json={"template": "yes"}), 400, "invalid_request")
    assert_error(client.put("/v1/workspaces/nope/template", json={"template": True}), 404, "workspace_not_found")


# --- bulk delete -----------------------------------------------------------------

def test_bulk_delete(harness):
    client = harness.client
    a = client.post("/v1/workspaces", json={"name": "a"}).json()
    b = client.post("/v1/workspaces", json={"name": "b"}).json()
    c = client.post("/v1/workspaces", json={"name": "c"}).json()
    session = client.post("/v1/sessions", json={"workspace": "b"}).json()
    result = client.post("/v1/workspaces/bulk-delete", json={"ids": ["a", "b", "missing", a["id"]]}).json()
    assert result["requested"] == 3 and result["deleted"] == 1 and result["failed"] == 2
    by_id = {item["id"]: item for item in result["results"]}
    assert by_id[a["id"]] == {"id": a["id"], "deleted": True}  # no `error: null` (chaser-sdk types it str)
    assert by_id[b["id"]]["deleted"] is False and "running session" in by_id[b["id"]]["error"]
    assert by_id["missing"]["deleted"] is False and by_id["missing"]["error"]
    assert {w["name"] for w in client.get("/v1/workspaces").json()} == {"b", "c"}

    result = client.post("/v1/workspaces/bulk-delete", json={"all": True, "force": True}).json()
    assert result == {"requested": 2, "deleted": 2, "failed": 0, "results": [
        {"id": b["id"], "deleted": True}, {"id": c["id"], "deleted": True}]}
    assert client.get(f"/v1/sessions/{session['id']}").json()["end_reason"] == "workspace_deleted"
    assert client.get("/v1/workspaces").json() == []
    assert client.post("/v1/workspaces/bulk-delete", json={}).json() == {
        "requested": 0, "deleted": 0, "failed": 0, "results": []}
    assert_error(client.post("/v1/workspaces/bulk-delete", json={"ids": "a"}), 400, "invalid_request")


# --- clone_from ------------------------------------------------------------------

def test_clone_from_copies_disk_and_image(harness):
    client = harness.client
    template = client.post("/v1/workspaces", json={"name": "tpl", "image": "python:3.12", "template": True}).json()
    write_disk(disk(harness, template["id"]), b"template data")
    clone = client.post("/v1/workspaces", json={"name": "copy", "clone_from": "tpl"}).json()
    assert clone["image"] == "docker.io/library/python:3.12" and clone["template"] is False
    assert clone["source_workspace_id"] == template["id"]
    assert read_disk(disk(harness, clone["id"]), 13) == b"template data"
    # The copy is independent of its source.
    write_disk(disk(harness, template["id"]), b"changed later")
    assert read_disk(disk(harness, clone["id"]), 13) == b"template data"
    # A source that never ran has no disk: neither has the clone.
    client.post("/v1/workspaces", json={"name": "blank"})
    empty = client.post("/v1/workspaces", json={"clone_from": "blank"}).json()
    assert not disk(harness, empty["id"]).exists()

    assert_error(client.post("/v1/workspaces", json={"clone_from": "nope"}), 404, "workspace_not_found")
    assert_error(client.post("/v1/workspaces", json={"name": "copy", "clone_from": "tpl"}), 409, "workspace_exists")
    assert_error(client.post("/v1/workspaces", json={"clone_from": "tpl", "image": "alpine"}), 400, "invalid_request")
    assert len(client.get("/v1/workspaces").json()) == 4  # no row left by a refused clone


def test_clone_from_a_running_workspace_freezes_it(harness):
    client = harness.client
    source = client.post("/v1/workspaces", json={"name": "src"}).json()
    write_disk(disk(harness, source["id"]), b"live data")
    session = client.post("/v1/sessions", json={"workspace": "src"}).json()
    vm = harness.vm(session["id"])
    disks_at_thaw = files_at_thaw(vm, harness.settings.workspaces_dir, "*/disk.img")
    clone = client.post("/v1/workspaces", json={"clone_from": "src"}).json()
    assert read_disk(disk(harness, clone["id"]), 9) == b"live data"
    assert vm.freeze_events == ["freeze", "thaw"]
    assert f"{clone['id']}/disk.img" in disks_at_thaw[0]  # copied while frozen
    assert "sync" in [p.command for p in vm.procs.values()]


# --- snapshots -----------------------------------------------------------------

def test_snapshot_crud_and_restore(harness):
    client = harness.client
    ws = client.post("/v1/workspaces", json={"name": "dev"}).json()
    path = disk(harness, ws["id"])
    write_disk(path, b"version one")
    assert client.get("/v1/workspaces/dev/snapshots").json() == []

    snap = client.post("/v1/workspaces/dev/snapshots", json={}).json()
    assert snap["id"].startswith("snap_") and snap["workspace_id"] == ws["id"]
    assert 0 < snap["used_bytes"] <= 2 * MIB and snap["created_at"].endswith("Z")
    assert snap["restored_at"] is None
    snap_file = path.parent / "snapshots" / f"{snap['id']}.img"
    assert snap_file.stat().st_blocks * 512 == snap["used_bytes"]
    named = client.post("/v1/workspaces/dev/snapshots", json={"name": "before-upgrade"}).json()
    assert named["name"] == "before-upgrade"
    assert_error(client.post("/v1/workspaces/dev/snapshots", json={"name": "before-upgrade"}), 409, "snapshot_exists")
    assert_error(client.post("/v1/workspaces/dev/snapshots", json={"name": "snap_00ff"}), 400, "invalid_request")
    assert_error(client.post("/v1/workspaces/dev/snapshots", json={"bogus": 1}), 400, "invalid_request")
    listed = client.get(f"/v1/workspaces/{ws['id']}/snapshots").json()
    assert [s["id"] for s in listed] == [snap["id"], named["id"]]

    write_disk(path, b"version two")
    restored = client.post(f"/v1/workspaces/dev/snapshots/{snap['id']}/restore", json={}).json()
    assert restored["id"] == snap["id"] and restored["restored_at"].endswith("Z")
    assert read_disk(path, 11) == b"version one"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    # By name, and without a body.
    write_disk(path, b"version six")
    assert client.post("/v1/workspaces/dev/snapshots/before-upgrade/restore").status_code == 200
    assert read_disk(path, 11) == b"version one"
    assert client.get("/v1/workspaces/dev/snapshots").json()[0]["restored_at"] is not None

    assert client.delete(f"/v1/workspaces/dev/snapshots/{snap['id']}").json() == {
        "id": snap["id"], "workspace_id": ws["id"], "deleted": True}
    assert not snap_file.exists()
    assert_error(client.delete(f"/v1/workspaces/dev/snapshots/{snap['id']}"), 404, "snapshot_not_found")
    assert_error(client.post(f"/v1/workspaces/dev/snapshots/{snap['id']}/restore"), 404, "snapshot_not_found")
    assert_error(client.post("/v1/workspaces/dev/snapshots/nope/restore"), 404, "snapshot_not_found")
    assert_error(client.get("/v1/workspaces/nope/snapshots"), 404, "workspace_not_found")
    assert_error(client.post("/v1/workspaces/nope/snapshots"), 404, "workspace_not_found")

    # Another workspace's snapshot is not reachable through this one.
    other = client.post("/v1/workspaces", json={"name": "other"}).json()
    assert_error(client.post(f"/v1/workspaces/other/snapshots/{named['id']}/restore"), 404, "snapshot_not_found")

    # Deleting the workspace deletes its snapshots (rows and files).
    assert client.delete("/v1/workspaces/dev").status_code == 200
    assert not path.parent.exists()
    from sqlalchemy import select

    from chaser.store.tables import WorkspaceSnapshot

    with harness.services.db.session() as s:
        assert list(s.scalars(select(WorkspaceSnapshot))) == []
    assert client.get(f"/v1/workspaces/{other['id']}/snapshots").json() == []


def test_snapshot_of_a_workspace_without_disk(harness):
    client = harness.client
    ws = client.post("/v1/workspaces", json={"name": "fresh"}).json()
    snap = client.post("/v1/workspaces/fresh/snapshots").json()
    assert snap["used_bytes"] == 0
    write_disk(disk(harness, ws["id"]), b"later")
    client.post(f"/v1/workspaces/fresh/snapshots/{snap['id']}/restore")
    assert not disk(harness, ws["id"]).exists()  # the next session starts with a fresh disk


def test_snapshot_while_running_freezes_the_vm(harness):
    client = harness.client
    ws = client.post("/v1/workspaces", json={"name": "dev"}).json()
    path = disk(harness, ws["id"])
    write_disk(path, b"running")
    session = client.post("/v1/sessions", json={"workspace": "dev"}).json()
    vm = harness.vm(session["id"])
    snapshots_at_thaw = files_at_thaw(vm, path.parent / "snapshots", "*.img")
    snap = client.post("/v1/workspaces/dev/snapshots").json()
    assert vm.freeze_events == ["freeze", "thaw"]
    assert snapshots_at_thaw == [[f"{snap['id']}.img"]]  # copied while frozen
    assert [p.command for p in vm.procs.values()] == ["sync"]  # synced before the freeze
    assert client.get(f"/v1/sessions/{session['id']}").json()["status"] == "running"

    # Restore while the session runs: 409, the disk is in use; force terminates it first.
    assert_error(client.post(f"/v1/workspaces/dev/snapshots/{snap['id']}/restore"), 409, "workspace_busy")
    write_disk(path, b"changed")
    restored = client.post(f"/v1/workspaces/dev/snapshots/{snap['id']}/restore", json={"force": True}).json()
    assert restored["restored_at"]
    ended = client.get(f"/v1/sessions/{session['id']}").json()
    assert ended["status"] == "terminated" and ended["end_reason"] == "snapshot_restored"
    assert vm.graceful is True  # stopped with a disk flush
    assert read_disk(path, 7) == b"running"


def test_snapshot_of_crashed_vm_is_503(harness):
    client = harness.client
    ws = client.post("/v1/workspaces", json={"name": "dev"}).json()
    write_disk(disk(harness, ws["id"]), b"x")
    session = client.post("/v1/sessions", json={"workspace": "dev"}).json()
    harness.vm(session["id"]).crash()
    assert_error(client.post("/v1/workspaces/dev/snapshots"), 503, "vm_crashed")
    assert client.get("/v1/workspaces/dev/snapshots").json() == []
    assert not list((disk(harness, ws["id"]).parent / "snapshots").glob("*"))


# --- scopes ------------------------------------------------------------------------

def test_scopes(harness):
    client = harness.client
    ws = client.post("/v1/workspaces", json={"name": "dev"}).json()
    snap = client.post("/v1/workspaces/dev/snapshots").json()
    reader = harness.key("workspaces.read")
    writer = harness.key("workspaces.write")
    sessions_only = harness.key("sessions.read", "sessions.write")
    writes = [
        ("put", "/v1/workspaces/dev/name", {"name": "x"}),
        ("put", "/v1/workspaces/dev/template", {"template": True}),
        ("post", "/v1/workspaces/bulk-delete", {"ids": ["nope"]}),
        ("post", "/v1/workspaces/dev/snapshots", {}),
        ("post", f"/v1/workspaces/dev/snapshots/{snap['id']}/restore", {}),
        ("delete", f"/v1/workspaces/dev/snapshots/{snap['id']}", None),
        ("post", "/v1/workspaces", {"clone_from": "dev"}),
    ]
    for method, url, body in writes:
        kwargs = {"json": body} if body is not None else {}
        assert_error(client.request(method, url, headers=reader, **kwargs), 403, "forbidden")
        assert_error(client.request(method, url, headers=sessions_only, **kwargs), 403, "forbidden")
    assert_error(client.get("/v1/workspaces/dev/snapshots", headers=sessions_only), 403, "forbidden")
    assert client.get("/v1/workspaces/dev/snapshots", headers=reader).status_code == 200
    assert client.post("/v1/workspaces/dev/snapshots", headers=writer).status_code == 200
    assert client.put("/v1/workspaces/dev/template", json={"template": True}, headers=writer).status_code == 200
    # Another account sees nothing of this one.
    stranger = harness.key("workspaces.read", "workspaces.write", account_id=_other_account(harness))
    assert_error(client.get(f"/v1/workspaces/{ws['id']}/snapshots", headers=stranger), 404, "workspace_not_found")
    assert_error(client.put(f"/v1/workspaces/{ws['id']}/name", json={"name": "mine"}, headers=stranger), 404,
                 "workspace_not_found")
    assert_error(client.post("/v1/workspaces", json={"clone_from": ws["id"]}, headers=stranger), 404,
                 "workspace_not_found")
    assert client.post("/v1/workspaces/bulk-delete", json={"ids": [ws["id"]]}, headers=stranger).json()["deleted"] == 0
    assert client.get(f"/v1/workspaces/{ws['id']}").status_code == 200


def _other_account(harness) -> str:
    from chaser.store import Account

    with harness.services.db.session() as s:
        if s.get(Account, "other") is None:
            s.add(Account(id="other", name="other"))
    return "other"


def test_sdk_paths_and_bodies(harness):
    """The official SDK's calls, replayed through its own transport onto the test app."""
    from urllib.parse import urlsplit

    from chaser_sdk import ChaserClient as SDKClient
    from chaser_sdk.client import HttpResponse

    client = harness.client

    class Transport:
        def request(self, method, url, headers, body, timeout):
            parts = urlsplit(url)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            response = client.request(method, path, headers=dict(headers), content=body)
            return HttpResponse(status=response.status_code, headers=dict(response.headers), body=response.content)

    sdk = SDKClient(base_url="http://testserver", api_key=harness.admin_key, transport=Transport())
    ws = sdk.workspaces.create(name="dev")
    assert sdk.workspaces.rename("dev", "renamed") == {"id": ws["id"], "name": "renamed"}
    assert sdk.workspaces.set_template("renamed", True) == {"id": ws["id"], "template": True}
    snap = sdk.workspaces.snapshots.create("renamed", name="s1")
    assert [s["id"] for s in sdk.workspaces.snapshots.list("renamed")] == [snap["id"]]
    assert sdk.workspaces.snapshots.restore("renamed", snap["id"])["restored_at"]
    sdk.workspaces.snapshots.delete("renamed", snap["id"])
    assert sdk.workspaces.bulk_delete({"ids": ["renamed"]})["deleted"] == 1


# --- client and CLI ----------------------------------------------------------------

def test_cli_over_the_app(harness, monkeypatch):
    """`chaser workspaces …` with our client, its HTTP served by the test app."""
    import json

    import httpx
    from typer.testing import CliRunner

    from chaser.cli import main
    from chaser.cli.commands import workspaces as commands
    from chaser.client import ChaserClient

    class AppTransport(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = harness.client.request(request.method, str(request.url), headers=dict(request.headers),
                                              content=request.read())
            return httpx.Response(response.status_code, headers=response.headers, content=response.content)

    def make_client():
        return ChaserClient("http://testserver", harness.admin_key, transport=AppTransport())

    monkeypatch.setattr(commands, "make_client", make_client)

    def cli(*args: str):
        result = CliRunner().invoke(main.app, ["workspaces", *args])
        return result

    def cli_json(*args: str):
        result = cli(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    ws = cli_json("create", "--name", "dev")
    assert cli_json("rename", "dev", "prod") == {"id": ws["id"], "name": "prod"}
    assert cli("rename", "prod").exit_code != 0  # NAME or --clear
    assert cli_json("template", "prod", "--on") == {"id": ws["id"], "template": True}
    assert "not a template" in cli("template", "prod", "--off").stdout
    write_disk(disk(harness, ws["id"]), b"cli data")
    clone = cli_json("create", "--clone-from", "prod", "--name", "copy")
    assert clone["source_workspace_id"] == ws["id"]
    snap = cli_json("snapshots", "create", "prod", "--name", "s1")
    assert snap["id"].startswith("snap_") and snap["used_bytes"] > 0
    assert [s["id"] for s in cli_json("snapshots", "list", "prod")] == [snap["id"]]
    assert "s1" in cli("snapshots", "list", "prod").stdout
    assert cli_json("snapshots", "restore", "prod", "s1")["restored_at"]
    assert cli_json("snapshots", "delete", "prod", snap["id"])["deleted"] is True
    missing = cli("snapshots", "delete", "prod", snap["id"])
    assert missing.exit_code == 1 and "snapshot_not_found" in missing.stderr
    assert cli("bulk-delete").exit_code != 0  # --all or --ids
    result = cli_json("bulk-delete", "--ids", "prod,nope", "--ids", "copy")
    assert result["requested"] == 3 and result["deleted"] == 2 and result["failed"] == 1
    assert cli_json("bulk-delete", "--all") == {"requested": 0, "deleted": 0, "failed": 0, "results": []}


def test_disk_operations_on_a_workspace_deleted_meanwhile(harness):
    """A snapshot/restore/clone that waited for the workspace lock while a delete ran answers 404."""
    client = harness.client
    ws = client.post("/v1/workspaces", json={"name": "dev"}).json()
    snap = client.post("/v1/workspaces/dev/snapshots").json()
    stale = harness.services.workspaces.get_in_account("personal", ws["id"])
    client.delete("/v1/workspaces/dev")
    sessions = harness.services.disks
    from chaser import errors

    for call in (lambda: sessions.create_snapshot(None, stale, name=None),
                 lambda: sessions.restore_snapshot(None, stale, snap["id"], force=False)):
        with pytest.raises(errors.NotFound):
            harness.client.portal.call(call)
    from sqlalchemy import select

    from chaser.store.tables import WorkspaceSnapshot

    with harness.services.db.session() as s:
        assert list(s.scalars(select(WorkspaceSnapshot))) == []
