"""Sessions booted from OCI images pulled from a real registry on loopback,
through the real API server: root file system and image config seen from
inside the VM, the cache hit path, and the image API."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import ServerProcess
from tests.integration.registry import build_feature_image, layout_digest, registry

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def feature_image(tmp_path_factory):
    work = tmp_path_factory.mktemp("images")
    with registry(work) as reg:
        layout = work / "layout"
        build_feature_image(work, layout, "v1", marker="one")
        ref = reg.push(layout, "v1", "test/feature")
        yield reg, ref, layout_digest(layout, "v1")


@pytest.fixture(scope="module")
def api(feature_image, tmp_path_factory):
    reg, _, _ = feature_image
    base = tmp_path_factory.mktemp("image-server")
    server = ServerProcess(home=base / "home", config_file=base / "config.json",
                           extra_env={"CHASER_REGISTRIES_INSECURE": json.dumps([reg.host])}).start()
    with server.client() as client:
        yield client
    server.stop()


def run(client, session_id: str, command: str) -> dict:
    response = client.post(f"/v1/sessions/{session_id}/exec", json={"command": command})
    assert response.status_code == 200, response.text
    return response.json()


def test_session_root_is_the_image_with_its_config_applied(api, feature_image):
    _, ref, _ = feature_image
    created = api.post("/v1/sessions", json={"ephemeral": True, "image": ref, "env": {"EXTRA": "x"}})
    assert created.status_code == 201, created.text
    session = created.json()
    assert session["status"] == "running" and session["image"] == ref
    try:
        sid = session["id"]
        # User and WorkingDir from the image config, Env under the session's env.
        assert run(api, sid, "id -un; pwd; echo $FOO-$EXTRA")["output"].split() == ["app", "/home/app", "bar-x"]
        # Layers applied in order: marker from layer 2, motd from layer 3.
        assert run(api, sid, "cat /marker /etc/motd")["output"] == "one\nlayer three\n"
        # Whiteout removed /gone; the opaque dir hides the lower layer's file.
        assert run(api, sid, "ls /gone")["exit_code"] != 0
        assert run(api, sid, "ls /opaque")["output"].split() == ["new"]
        # Symlink, hard link (one inode), setuid bit, ownership kept.
        listing = run(api, sid, "ls -lni /data/orig /data/link /bin/suid /owned; ls -l /data/sym")["output"]
        lines = {line.split()[-1]: line for line in listing.splitlines() if "->" not in line}
        assert lines["/data/orig"].split()[0] == lines["/data/link"].split()[0]  # same inode
        assert "rws" in lines["/bin/suid"]
        assert " 1000 " in lines["/owned"]
        assert "/data/sym -> /data/orig" in listing
        # The session's writable layer works for the image's user.
        assert run(api, sid, "echo hi > /home/app/new && cat /home/app/new")["output"] == "hi\n"
    finally:
        api.delete(f"/v1/sessions/{session['id']}", params={"force": "true"})


def test_session_env_overrides_image_env(api, feature_image):
    _, ref, _ = feature_image
    session = api.post("/v1/sessions", json={"ephemeral": True, "image": ref, "env": {"FOO": "mine"}}).json()
    try:
        assert run(api, session["id"], "echo $FOO")["output"] == "mine\n"
    finally:
        api.delete(f"/v1/sessions/{session['id']}", params={"force": "true"})


def test_pull_by_digest_and_cache_hit(api, feature_image):
    reg, _ref, digest = feature_image
    before = {row["digest"]: row for row in api.get("/v1/images").json()["images"]}
    by_digest = f"{reg.host}/test/feature@{digest}"
    result = api.post("/v1/exec", json={"ephemeral": True, "image": by_digest, "command": "cat /marker"})
    assert result.status_code == 200, result.text
    assert result.json()["output"] == "one\n"
    after = {row["digest"]: row for row in api.get("/v1/images").json()["images"]}
    assert digest in after and after[digest]["created"] == before[digest]["created"]  # converted once


def test_image_api_and_in_use_protection(api, feature_image):
    _, ref, digest = feature_image
    pulled = api.post("/v1/images", json={"ref": ref})
    assert pulled.status_code == 200 and pulled.json()["digest"] == digest
    assert pulled.json()["config"]["user"] == "app"
    session = api.post("/v1/sessions", json={"ephemeral": True, "image": ref}).json()
    busy = api.delete(f"/v1/images/{digest}")  # a digest removes the image and every name of it
    assert busy.status_code == 409, busy.text
    api.delete(f"/v1/sessions/{session['id']}", params={"force": "true"})
    removed = api.delete(f"/v1/images/{digest}")
    assert removed.status_code == 200 and removed.json()["deleted"] == [digest]
    assert api.delete(f"/v1/images/{ref}").json()["code"] == "image_not_found"
    assert digest not in {row["digest"] for row in api.get("/v1/images").json()["images"]}


def test_bad_image_requests(api, feature_image):
    reg, _, _ = feature_image
    missing = api.post("/v1/sessions", json={"ephemeral": True, "image": f"{reg.host}/test/nope:1"})
    assert missing.status_code == 404 and missing.json()["code"] == "image_not_found"
    bad = api.post("/v1/sessions", json={"ephemeral": True, "image": "UPPER/not valid"})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_image"
    down = api.post("/v1/sessions", json={"ephemeral": True, "image": "127.0.0.1:9/test/x:1"})
    assert down.status_code == 502 and down.json()["code"] == "image_pull_failed"
    assert api.get("/v1/sessions").json()["total"] == 0  # nothing left behind
    scoped = api.post("/v1/keys", json={"name": "no-admin", "scopes": ["sessions.read", "sessions.write"]}).json()
    denied = api.get("/v1/images", headers={"Authorization": f"Bearer {scoped['key']}"})
    assert denied.status_code == 403 and denied.json()["code"] == "forbidden"
