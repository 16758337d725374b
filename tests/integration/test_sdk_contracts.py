"""What the official client sees (issue 9), end to end: a real `chaser server`, real
microVMs, chaser-sdk over its own urllib transport (and httpx / a raw socket where
the SDK has no method)."""

from __future__ import annotations

import os
import socket

import httpx
import pytest
from chaser_sdk import ChaserClient
from chaser_sdk.client import UrllibTransport
from chaser_sdk.errors import ChaserApiError

from tests.integration.conftest import qemu_pids_under
from tests.support.harness import TEST_RATE_LIMIT_PER_MINUTE
from tests.support.wait import wait_until

pytestmark = pytest.mark.vm

MiB = 1024 * 1024
NOT_HERE = "is not available on a self-hosted Chaser server"


class RecordingTransport(UrllibTransport):
    """The SDK's own transport, remembering each answer's status."""

    def __init__(self) -> None:
        self.statuses: list[int] = []

    def request(self, method, url, headers, body, timeout):
        response = super().request(method, url, headers, body, timeout)
        self.statuses.append(response.status)
        return response


@pytest.fixture(scope="module")
def transport() -> RecordingTransport:
    return RecordingTransport()


@pytest.fixture(scope="module")
def sdk(server, transport) -> ChaserClient:
    return ChaserClient(base_url=server.url, api_key=server.api_key, timeout=300, transport=transport)


@pytest.fixture(scope="module")
def session(sdk):
    info = sdk.sessions.create(session_type="sandbox", ephemeral=True)
    yield info
    sdk.sessions.terminate(info["id"], force=True)


def read_head_and_body(sock: socket.socket) -> tuple[str, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the answer"
        body += chunk
    return head.decode("latin-1"), body


# --- 1. a 413 the client can read ------------------------------------------------------

def test_sdk_upload_over_the_limit_gets_the_413(sdk, session):
    sid = session["id"]
    with pytest.raises(ChaserApiError) as refused:  # not ConnectionResetError / URLError
        sdk.files.upload(sid, path="/workspace/too-big.bin", data=os.urandom(17 * MiB))
    assert (refused.value.status, refused.value.code) == (413, "payload_too_large")
    assert "16777216" in str(refused.value) and refused.value.request_id
    # The server goes on serving, the session included; nothing was written.
    assert sdk.sessions.get(sid)["status"] == "running"
    assert sdk.exec.in_session(sid, command="ls -A /workspace")["output"] == ""
    assert sdk.files.upload(sid, path="/workspace/ok.txt", data=b"fine") == {"path": "/workspace/ok.txt", "size": 4}


def test_a_body_past_the_hard_cap_is_refused_without_being_read(server, sdk, session):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(60)
        # 1 GiB announced, not one byte of it sent: the answer comes all the same.
        sock.sendall((f"POST /v1/sessions/{session['id']}/upload HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {server.api_key}\r\n"
                      "Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 1073741824\r\n\r\n").encode())
        head, body = read_head_and_body(sock)
        assert head.startswith("HTTP/1.1 413") and b'"code":"payload_too_large"' in body
        assert "connection: close" in head.lower()
        assert sock.recv(1) == b""  # closed by the server
    assert sdk.sessions.get(session["id"])["status"] == "running"


# --- 4. a workspace's running session is the answer -----------------------------------

def test_creating_a_session_for_a_busy_workspace_returns_it(server, sdk, transport):
    workspace = sdk.workspaces.create(name="sdk-reuse", session_type="sandbox")
    disk_dir = server.home / "workspaces" / workspace["id"]
    try:
        first = sdk.sessions.create(session_type="sandbox", workspace="sdk-reuse")
        assert transport.statuses[-1] == 201 and first["status"] == "running"
        again = sdk.sessions.create(session_type="sandbox", workspace="sdk-reuse")
        assert transport.statuses[-1] == 200 and again["id"] == first["id"]
        by_id = sdk.sessions.create(session_type="sandbox", workspace=workspace["id"], network={"internet": False})
        assert transport.statuses[-1] == 200 and by_id["id"] == first["id"]
        assert len(qemu_pids_under(disk_dir)) == 1  # one VM on the workspace's disk
        assert [s["id"] for s in sdk.sessions.list() if s.get("workspace_id") == workspace["id"]] == [first["id"]]
        network = httpx.get(f"{server.url}/v1/sessions/{first['id']}/network",
                            headers={"Authorization": f"Bearer {server.api_key}"}).json()
        assert network["internet"] is False  # the reuse applied the request's network
        with pytest.raises(ChaserApiError) as busy:
            sdk.sessions.create(session_type="sandbox", workspace="sdk-reuse", env={"NEW": "1"})
        assert (busy.value.status, busy.value.code) == (409, "workspace_busy") and "env" in str(busy.value)
        assert len(qemu_pids_under(disk_dir)) == 1
    finally:
        sdk.workspaces.delete("sdk-reuse", force=True)
    wait_until(lambda: not qemu_pids_under(disk_dir), 60, interval=0.2, message="the workspace's QEMU did not exit")


# --- 6. deliberate answers for what a self-hosted server does not serve -------------------

def test_hosted_only_areas_answer_501_through_the_sdk(sdk, session):
    calls = {
        "accounts": [sdk.accounts.list, sdk.accounts.current, sdk.accounts.members.list,
                     lambda: sdk.accounts.members.update("u1", "admin"), sdk.accounts.service_accounts.list,
                     lambda: sdk.accounts.service_accounts.keys.revoke("sa1", "k1")],
        "ssh keys": [sdk.ssh_keys.list, lambda: sdk.ssh_keys.create("ssh-ed25519 AAAA", name="me"),
                     lambda: sdk.ssh_keys.delete("k1")],
        "billing": [sdk.billing.summary, lambda: sdk.billing.update_account(plan_code="pro"),
                    lambda: sdk.billing.create_checkout(amount_usd=5)],
        "webhooks": [sdk.webhooks.list, lambda: sdk.webhooks.create(url="https://example.com/h"),
                     lambda: sdk.webhooks.delete("wh1"), sdk.webhooks.deliveries.list,
                     lambda: sdk.webhooks.deliveries.replay("d1")],
        "jobs": [sdk.jobs.list_kinds, sdk.jobs.list, lambda: sdk.jobs.exec({"command": "ls"}),
                 lambda: sdk.jobs.get("j1"), lambda: sdk.jobs.cancel("j1"), lambda: sdk.jobs.retry("j1")],
        "github": [sdk.github.list_repositories],
        "workspace import from GitHub": [lambda: sdk.workspaces.import_from_github(repo="octo/repo")],
        "browser CDP": [lambda: sdk.browser.version(session["id"]), lambda: sdk.browser.list_targets(session["id"])],
    }
    for area, methods in calls.items():
        for method in methods:
            with pytest.raises(ChaserApiError) as refused:
                method()
            assert (refused.value.status, refused.value.code) == (501, "not_implemented"), area
            assert str(refused.value) == f"{area} {NOT_HERE}"
            # Every authenticated answer carries the key's rate limit (the suite's servers: a huge one).
            assert refused.value.rate_limit.limit == TEST_RATE_LIMIT_PER_MINUTE


def test_cdp_paths_answer_501_over_plain_http(server, session):
    headers = {"Authorization": f"Bearer {server.api_key}"}
    for tail in ("json/version", "json/list"):
        response = httpx.get(f"{server.url}/v1/sessions/{session['id']}/{tail}", headers=headers)
        assert response.status_code == 501 and response.headers["x-request-id"]
        assert response.json() == {"code": "not_implemented", "message": f"browser CDP {NOT_HERE}"}
        assert httpx.get(f"{server.url}/v1/sessions/{session['id']}/{tail}").status_code == 401


def test_answers_follow_the_sdk_field_types(sdk, session):
    sid = session["id"]
    background = sdk.exec.in_session(sid, command="sleep 300", background=True)
    assert background["status"] == "running" and isinstance(background["pid"], int)
    assert "exit_code" not in background
    listing = sdk.commands.list(sid)
    assert listing and all("output" not in command and None not in command.values() for command in listing)
    sdk.commands.kill(sid, background["command_id"])
    killed = sdk.commands.wait_for_completion(sid, background["command_id"], timeout_secs=60, interval_secs=0.2)
    assert isinstance(killed["exit_code"], int) and isinstance(killed["output"], str)

    key = sdk.keys.create(name="typed", scopes=["sessions.read"])
    assert next(k for k in sdk.keys.list() if k["id"] == key["id"])["revoked"] is None
    sdk.keys.revoke(key["id"])
    assert isinstance(next(k for k in sdk.keys.list() if k["id"] == key["id"])["revoked"], str)

    sdk.workspaces.create(name="sdk-typed")
    result = sdk.workspaces.bulk_delete({"ids": ["sdk-typed", "sdk-missing"]})
    ok, missing = sorted(result["results"], key=lambda item: item["id"] == "sdk-missing")
    assert ok["deleted"] is True and "error" not in ok
    assert missing["deleted"] is False and isinstance(missing["error"], str)


# --- 7. the audit log -----------------------------------------------------------------------

def test_the_audit_log_through_the_sdk(server, sdk, session):
    sid = session["id"]
    marker = "echo audited-through-the-sdk"
    assert sdk.exec.in_session(sid, command=marker)["exit_code"] == 0
    sdk.files.upload(sid, path="/workspace/audited.txt", data=b"twelve bytes")
    execs = sdk.audit.list(action="command.exec", resource_id=sid, limit=1000)
    mine = next(event for event in execs if event["metadata"]["command"] == marker)
    assert (mine["actor_type"], mine["client_address"], mine["status"]) == ("api_key", "127.0.0.1", "success")
    assert mine["resource_type"] == "session" and mine["metadata"]["exit_code"] == 0
    # The MCP tools call the API back (over loopback) with the caller's key: recorded as that key's.
    mcp = httpx.post(f"{server.url}/v1/mcp", timeout=300, headers={
        "Authorization": f"Bearer {server.api_key}", "Content-Type": "application/json"}, json={
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "terminal", "arguments": {"session_id": sid, "command": "echo via-mcp"}}})
    assert mcp.status_code == 200 and mcp.json()["result"]["isError"] is False, mcp.text
    via_mcp = sdk.audit.list(action="command.exec", limit=1)[0]
    assert via_mcp["metadata"]["command"] == "echo via-mcp" and via_mcp["actor_id"] == mine["actor_id"]
    upload = sdk.audit.list(action="file.upload", limit=1)[0]
    assert upload["metadata"] == {"path": "/workspace/audited.txt", "size": 12}
    # Pages: the last id of one page is the `before` of the next; together they are the whole log.
    everything = sdk.audit.list(limit=1000)
    assert everything[0]["id"] == via_mcp["id"]
    pages, before = [], None
    while page := sdk.audit.list(limit=4, before=before):
        pages.extend(page)
        before = page[-1]["id"]
    assert pages == everything and {"session.created", "key.created"} <= {e["action"] for e in everything}
    # The scope: a key without `audit.read` gets the usual 403; one with it reads.
    narrow = sdk.keys.create(name="no-audit", scopes=["sessions.read"])
    with pytest.raises(ChaserApiError) as refused:
        sdk.with_token(narrow["key"]).audit.list()
    assert (refused.value.status, refused.value.code) == (403, "forbidden")
    reader = sdk.keys.create(name="auditor", scopes=["audit.read"])
    assert sdk.with_token(reader["key"]).audit.list(limit=1)[0]["action"] == "key.created"
    with pytest.raises(ChaserApiError) as invalid:
        sdk.audit.list(before="not-an-id")
    assert (invalid.value.status, invalid.value.code) == (400, "invalid_request")
    for key in (narrow, reader):
        sdk.keys.revoke(key["id"])
