"""API keys, scopes, accounts."""

from __future__ import annotations

from tests.support import assert_error


def test_missing_malformed_and_unknown_keys_are_401(harness):
    client = harness.client
    assert_error(client.get("/v1/sessions", headers={"Authorization": ""}), 401, "unauthorized")
    assert_error(client.get("/v1/sessions", headers={"Authorization": "Basic abc"}), 401, "unauthorized")
    assert_error(client.get("/v1/sessions", headers={"Authorization": "Bearer sk_nope"}), 401, "unauthorized")
    assert client.get("/health", headers={"Authorization": ""}).status_code == 200


def test_keys_create_list_revoke(harness):
    client = harness.client
    created = client.post("/v1/keys", json={"name": "ci", "scopes": ["sessions.read"]}).json()
    assert created["key"].startswith("sk_") and created["key"].startswith(created["key_prefix"])
    assert created["scopes"] == ["sessions.read"] and created["full_access"] is False
    headers = {"Authorization": f"Bearer {created['key']}"}
    assert client.get("/v1/sessions", headers=headers).status_code == 200
    keys = client.get("/v1/keys").json()["keys"]
    mine = next(k for k in keys if k["id"] == created["id"])
    assert mine["last_used_at"] is not None and mine["revoked"] is None and mine["revoked_at"] is None
    assert "key" not in mine and "key_hash" not in mine
    assert client.delete(f"/v1/keys/{created['id']}").json() == {"id": created["id"], "revoked": True}
    assert_error(client.get("/v1/sessions", headers=headers), 401, "unauthorized")
    revoked = next(k for k in client.get("/v1/keys").json()["keys"] if k["id"] == created["id"])
    assert revoked["revoked"] and revoked["revoked"] == revoked["revoked_at"]  # a timestamp, as chaser-sdk types it
    assert_error(client.delete("/v1/keys/key_missing"), 404, "not_found")


def test_only_the_hash_is_stored(harness):
    from sqlalchemy import select

    from chaser.store import ApiKey

    with harness.services.db.session() as s:
        hashes = list(s.scalars(select(ApiKey.key_hash)))
    assert harness.admin_key not in hashes
    assert all(len(h) == 64 for h in hashes)


def test_scopes_are_enforced(harness):
    client = harness.client
    session = harness.session()
    reader = harness.key("sessions.read")
    assert client.get(f"/v1/sessions/{session['id']}", headers=reader).status_code == 200
    assert_error(client.post("/v1/sessions", json={"ephemeral": True}, headers=reader), 403, "forbidden")
    assert_error(client.post(f"/v1/sessions/{session['id']}/exec", json={"command": "ls"}, headers=reader),
                 403, "forbidden")
    assert_error(client.get("/v1/keys", headers=reader), 403, "forbidden")
    assert_error(client.get("/v1/workspaces", headers=reader), 403, "forbidden")


def test_a_key_cannot_grant_what_it_lacks(harness):
    client = harness.client
    limited = harness.key("keys.write", "sessions.read")
    assert_error(client.post("/v1/keys", json={"scopes": ["exec.write"]}, headers=limited), 403, "forbidden")
    assert_error(client.post("/v1/keys", json={"scopes": ["full_access"]}, headers=limited), 403, "forbidden")
    inherited = client.post("/v1/keys", json={"name": "child"}, headers=limited).json()
    assert inherited["full_access"] is False and inherited["scopes"] == ["keys.write", "sessions.read"]
    narrowed = client.post("/v1/keys", json={"scopes": ["sessions.read"]}, headers=limited).json()
    assert narrowed["scopes"] == ["sessions.read"]
    assert client.post("/v1/keys", json={}).json()["full_access"] is True
    assert_error(client.post("/v1/keys", json={"scopes": ["root"]}), 400, "invalid_request")


def test_account_header_and_isolation(harness):
    client = harness.client
    session = harness.session()
    assert client.get("/v1/sessions", headers={"X-Chaser-Account": "personal"}).status_code == 200
    assert_error(client.get("/v1/sessions", headers={"X-Chaser-Account": "someone-else"}), 403, "forbidden")

    harness.services.keys.ensure_account("acct_other")
    other = harness.key("sessions.read", "sessions.write", "exec.write", "files.read", "workspaces.read",
                        "keys.read", account_id="acct_other")
    assert_error(client.get(f"/v1/sessions/{session['id']}", headers=other), 404, "session_not_found")
    assert_error(client.delete(f"/v1/sessions/{session['id']}", headers=other), 404, "session_not_found")
    assert_error(client.post(f"/v1/sessions/{session['id']}/exec", json={"command": "ls"}, headers=other),
                 404, "session_not_found")
    assert_error(client.get(f"/v1/sessions/{session['id']}/download?path=/x", headers=other), 404,
                 "session_not_found")
    assert client.get("/v1/sessions", headers=other).json() == {"sessions": [], "total": 0}
    workspace = client.post("/v1/workspaces", json={"name": "mine"}).json()
    assert_error(client.get(f"/v1/workspaces/{workspace['id']}", headers=other), 404, "workspace_not_found")
    assert_error(client.get("/v1/workspaces/mine", headers=other), 404, "workspace_not_found")
    assert all(k["id"] for k in client.get("/v1/keys", headers=other).json()["keys"])
    assert len(client.get("/v1/keys", headers=other).json()["keys"]) == 1
    assert_error(client.get("/v1/sessions", headers={**other, "X-Chaser-Account": "personal"}), 403, "forbidden")


def test_server_start_creates_and_reuses_admin_key(tmp_path):
    import json
    import stat

    from chaser.cli.commands.server import ensure_admin_key
    from chaser.service.container import build_services
    from tests.support import make_settings

    settings = make_settings(tmp_path)
    services = build_services(settings)
    lines: list[str] = []
    key = ensure_admin_key(services, url="http://127.0.0.1:9", config_file=settings.config_file, echo=lines.append)
    assert lines[0] == "API URL: http://127.0.0.1:9" and lines[1] == f"API key: {key}"
    assert json.loads(settings.config_file.read_text()) == {"api_url": "http://127.0.0.1:9", "api_key": key}
    assert stat.S_IMODE(settings.config_file.stat().st_mode) == 0o600
    again: list[str] = []
    assert ensure_admin_key(build_services(settings), url="http://127.0.0.1:9", config_file=settings.config_file,
                            echo=again.append) == key
    assert str(settings.config_file) in again[2]
    settings.config_file.unlink()  # lost config: a new, working key is made
    fresh = ensure_admin_key(build_services(settings), url="http://127.0.0.1:9", config_file=settings.config_file,
                             echo=lambda _line: None)
    assert fresh != key and build_services(settings).keys.is_valid(fresh)
