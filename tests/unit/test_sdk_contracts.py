"""What chaser-sdk sees (issue 9): readable 413s, a workspace's running session as the
answer to a create, deliberate 501s for what a self-hosted server does not serve, and
field types that follow the SDK's. Over the fake runtime; the SDK talks to the app
through the TestClient, or (for what only a real socket shows) to uvicorn."""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import threading
import time

import pytest
from chaser_sdk import ChaserClient
from chaser_sdk.client import HttpResponse
from chaser_sdk.errors import ChaserApiError

from chaser.api.body import DrainBodyMiddleware
from chaser.api.routes.unavailable import UNAVAILABLE, not_available_message
from chaser.models import SessionCreate
from tests.support import FakeRuntime, Harness, assert_error, async_wait_until, free_port, make_settings, wait_until

MiB = 1024 * 1024


class SdkOverTestClient:
    """chaser-sdk's Transport over the app's TestClient; records each answer's status."""

    def __init__(self, client) -> None:
        self.client = client
        self.statuses: list[int] = []

    def request(self, method, url, headers, body, timeout) -> HttpResponse:
        response = self.client.request(method, url, headers=dict(headers), content=body)
        self.statuses.append(response.status_code)
        return HttpResponse(status=response.status_code, body=response.content,
                            headers={key.lower(): value for key, value in response.headers.items()})


def sdk_for(h: Harness) -> tuple[ChaserClient, SdkOverTestClient]:
    transport = SdkOverTestClient(h.client)
    return ChaserClient(base_url="http://testserver", api_key=h.admin_key, transport=transport), transport


# --- the drain, at the ASGI level --------------------------------------------------

def http_scope(path: str = "/v1/sessions/s/upload", **headers: str) -> dict:
    return {"type": "http", "method": "POST", "path": path,
            "headers": [(key.replace("_", "-").encode(), value.encode()) for key, value in headers.items()]}


async def refuse_unread(scope, receive, send, status: int = 413) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"code": "payload_too_large", "message": "x"}'})


class Client:
    """A request body of `chunks`; `sent` holds (message, chunks still unread when it was sent)."""

    def __init__(self, chunks: list[bytes], *, stall: bool = False) -> None:
        self.pending = list(chunks)
        self.stall = stall
        self.reads = 0
        self.sent: list[tuple[dict, int]] = []

    async def receive(self) -> dict:
        if not self.pending:
            if self.stall:
                await asyncio.sleep(3600)
            return {"type": "http.disconnect"}
        self.reads += 1
        body = self.pending.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(self.pending) or self.stall}

    async def send(self, message: dict) -> None:
        self.sent.append((message, len(self.pending)))

    @property
    def start(self) -> dict:
        return next(message for message, _ in self.sent if message["type"] == "http.response.start")

    @property
    def unread_at_answer(self) -> int:
        return next(left for message, left in self.sent if message["type"] == "http.response.start")

    @property
    def closes(self) -> bool:
        return (b"connection", b"close") in self.start["headers"]


def drive(app, scope: dict, client: Client) -> Client:
    asyncio.run(app(scope, client.receive, client.send))
    return client


def test_an_error_answered_before_the_body_is_read_drains_it_first():
    app = DrainBodyMiddleware(refuse_unread, max_bytes=100_000)
    client = drive(app, http_scope(content_length="10000"), Client([b"x" * 1000] * 10))
    assert client.start["status"] == 413 and client.unread_at_answer == 0 and client.reads == 10
    assert not client.closes  # the whole body was read: the connection stays usable

    chunked = drive(app, http_scope(transfer_encoding="chunked"), Client([b"x" * 1000] * 10))
    assert chunked.unread_at_answer == 0 and not chunked.closes


def test_what_the_app_already_read_counts_and_the_rest_is_drained():
    async def read_some_then_refuse(scope, receive, send):
        for _ in range(3):
            await receive()
        await refuse_unread(scope, receive, send)

    client = drive(DrainBodyMiddleware(read_some_then_refuse, max_bytes=100_000),
                   http_scope(transfer_encoding="chunked"), Client([b"x" * 1000] * 10))
    assert client.reads == 10 and client.unread_at_answer == 0 and not client.closes


def test_past_the_hard_cap_the_answer_goes_out_and_the_connection_closes():
    app = DrainBodyMiddleware(refuse_unread, max_bytes=5000)
    declared = drive(app, http_scope(content_length=str(1 << 30)), Client([b"x" * 1000] * 10))
    assert declared.reads == 0 and declared.closes and declared.start["status"] == 413  # not a byte read

    streamed = drive(app, http_scope(transfer_encoding="chunked"), Client([b"x" * 1000] * 20))
    assert streamed.reads == 6 and streamed.unread_at_answer == 14 and streamed.closes  # stopped past 5000


def test_no_drain_for_expect_continue_success_answers_the_gateway_or_no_body():
    app = DrainBodyMiddleware(refuse_unread, max_bytes=100_000)
    expecting = drive(app, http_scope(content_length="5000", expect="100-continue"), Client([b"x" * 1000] * 5))
    assert expecting.reads == 0 and expecting.closes  # no 100 Continue went out: the client sends nothing

    async def ok(scope, receive, send):
        await refuse_unread(scope, receive, send, status=200)

    success = drive(DrainBodyMiddleware(ok, max_bytes=100_000), http_scope(content_length="5000"),
                    Client([b"x" * 1000] * 5))
    assert success.reads == 0 and not success.closes
    gateway = drive(app, http_scope("/s/ses_x/forward/80/", content_length="5000"), Client([b"x" * 1000] * 5))
    assert gateway.reads == 0 and not gateway.closes  # the relay owns the body
    bodiless = drive(app, http_scope(), Client([]))
    assert bodiless.reads == 0 and not bodiless.closes


def test_a_client_that_stalls_while_drained_is_closed_on():
    app = DrainBodyMiddleware(refuse_unread, max_bytes=100_000, idle_timeout_s=0.05)
    started = time.monotonic()
    client = drive(app, http_scope(transfer_encoding="chunked"), Client([b"x" * 1000] * 2, stall=True))
    assert client.start["status"] == 413 and client.closes and time.monotonic() - started < 5


# --- the drain, over a real socket (uvicorn + the fake runtime) ----------------------

class LiveServer:
    def __init__(self, tmp_path) -> None:
        import uvicorn

        from chaser.assembly import create_app

        self.runtime = FakeRuntime()
        self.app = create_app(make_settings(tmp_path), self.runtime, reaper_interval=3600)
        self.key = self.app.state.services.keys.create(name="admin", full_access=True).key
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), timeout=20,
                   message="uvicorn did not start")
        assert self.server.started, "uvicorn exited at start-up"
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


@pytest.fixture
def live(tmp_path):
    server = LiveServer(tmp_path)
    yield server
    server.stop()


def read_response(sock: socket.socket) -> tuple[str, bytes]:
    """One HTTP/1.1 response with a Content-Length: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before the answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the answer"
        body += chunk
    return head.decode("latin-1"), body


def test_sdk_upload_over_the_limit_is_a_readable_413(live):
    sdk = ChaserClient(base_url=live.url, api_key=live.key, timeout=60)
    sid = sdk.sessions.create(ephemeral=True)["id"]
    with pytest.raises(ChaserApiError) as refused:  # not ConnectionResetError: the body was read and discarded
        sdk.files.upload(sid, path="/workspace/big.bin", data=os.urandom(17 * MiB))
    assert (refused.value.status, refused.value.code) == (413, "payload_too_large")
    assert refused.value.request_id
    assert sdk.sessions.get(sid)["status"] == "running"
    assert "/workspace/big.bin" not in live.runtime.started[0].files
    assert sdk.files.upload(sid, path="/workspace/small.bin", data=b"ok")["size"] == 2


def test_after_a_drained_413_the_connection_serves_the_next_request(live):
    body = b"z" * (17 * MiB)
    with socket.create_connection(("127.0.0.1", live.port)) as sock:
        sock.settimeout(30)
        sock.sendall((f"POST /v1/sessions/ses_nope/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {live.key}\r\n"
                      f"Content-Type: multipart/form-data; boundary=B\r\nContent-Length: {len(body)}\r\n\r\n").encode())
        sock.sendall(body)
        head, answer = read_response(sock)
        assert head.startswith("HTTP/1.1 413") and b"payload_too_large" in answer
        assert "connection: close" not in head.lower()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        head, answer = read_response(sock)
        assert head.startswith("HTTP/1.1 200") and answer == b'{"status":"ok"}'


def test_a_body_past_the_hard_cap_is_refused_unread(live):
    with socket.create_connection(("127.0.0.1", live.port)) as sock:
        sock.settimeout(30)
        sock.sendall((f"POST /v1/sessions/ses_nope/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {live.key}\r\n"
                      "Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 1073741824\r\n\r\n").encode())
        head, answer = read_response(sock)  # answered although not one byte of the body was sent
        assert head.startswith("HTTP/1.1 413") and "connection: close" in head.lower()
        assert b"payload_too_large" in answer
        assert sock.recv(1) == b""  # and the server closed the connection


def test_mcp_over_its_limit_is_the_api_error_shape(harness):
    from chaser.mcp.asgi import MAX_REQUEST_BODY_BYTES

    response = harness.client.post("/v1/mcp", content=b"{}", headers={
        "Content-Type": "application/json", "Content-Length": str(MAX_REQUEST_BODY_BYTES + 1)})
    assert response.status_code == 413 and response.json()["code"] == "payload_too_large"


# --- a workspace's running session is the answer ----------------------------------

def test_create_naming_a_busy_workspace_returns_its_session(harness):
    sdk, transport = sdk_for(harness)
    sdk.workspaces.create(name="dev")
    first = sdk.sessions.create(session_type="sandbox", workspace="dev")
    again = sdk.sessions.create(session_type="sandbox", workspace="dev")
    assert again["id"] == first["id"] and again["status"] == "running" and transport.statuses[-2:] == [201, 200]
    assert len(harness.runtime.started) == 1 and harness.client.get("/v1/sessions").json()["total"] == 1
    by_id = harness.client.post("/v1/sessions", json={"workspace": first["workspace_id"]})
    assert by_id.status_code == 200 and by_id.json() == {**first, "status": "running"}
    sdk.sessions.terminate(first["id"])
    fresh = harness.client.post("/v1/sessions", json={"workspace": "dev"})
    assert fresh.status_code == 201 and fresh.json()["id"] != first["id"] and len(harness.runtime.started) == 2


def test_a_reused_session_gets_the_requests_network(harness):
    client = harness.client
    client.post("/v1/workspaces", json={"name": "dev"})
    first = client.post("/v1/sessions", json={"workspace": "dev"}).json()
    vm = harness.vm(first["id"])
    reused = client.post("/v1/sessions", json={"workspace": "dev", "network": {"internet": False}})
    assert reused.status_code == 200 and reused.json()["id"] == first["id"]
    assert [policy.internet for policy in vm.network_changes] == [False]
    assert client.get(f"/v1/sessions/{first['id']}/network").json()["internet"] is False
    client.post("/v1/sessions", json={"workspace": "dev", "network": {"internet": False}})
    assert len(vm.network_changes) == 1  # the same policy again changes nothing


def test_a_reuse_asking_for_another_env_or_proxy_is_409(harness):
    client = harness.client
    client.post("/v1/workspaces", json={"name": "dev"})
    first = client.post("/v1/sessions", json={"workspace": "dev", "env": {"A": "1"}, "proxy": "http://p:3128"})
    assert first.status_code == 201
    for body in ({"env": {"A": "1"}}, {}, {"env": {"A": "1"}, "proxy": "http://p:3128"}):  # nothing new asked
        same = client.post("/v1/sessions", json={"workspace": "dev", **body})
        assert same.status_code == 200 and same.json()["id"] == first.json()["id"]
    env = assert_error(client.post("/v1/sessions", json={"workspace": "dev", "env": {"A": "2"}}), 409, "workspace_busy")
    assert first.json()["id"] in env["message"] and "env" in env["message"]
    proxy = assert_error(client.post("/v1/sessions", json={"workspace": "dev", "proxy": "http://q:3128"}), 409,
                         "workspace_busy")
    assert "proxy" in proxy["message"]
    assert len(harness.runtime.started) == 1


def test_the_default_workspace_is_reused_too(tmp_path):
    h = Harness(tmp_path, default_workspace="default")
    try:
        first, again = h.client.post("/v1/sessions", json={}), h.client.post("/v1/sessions", json={})
        assert (first.status_code, again.status_code) == (201, 200) and first.json()["id"] == again.json()["id"]
    finally:
        h.close()


def test_concurrent_creates_share_one_vm_and_say_which_started(harness):
    harness.client.post("/v1/workspaces", json={"name": "dev"})
    principal = harness.services.keys.authenticate(harness.admin_key)
    sessions = harness.services.sessions

    async def both():
        harness.runtime.hold_starts()  # the first create's boot waits until all three are under way
        creates = [asyncio.ensure_future(sessions.create(principal, SessionCreate(workspace="dev"))) for _ in range(3)]
        await async_wait_until(lambda: harness.runtime.starts_held == 1 and all(
            inspect.getcoroutinestate(task.get_coro()) == inspect.CORO_SUSPENDED for task in creates),
            message="the creates did not all get under way")
        harness.runtime.release_starts()
        return await asyncio.gather(*creates)

    results = harness.client.portal.call(both)
    assert len({row.id for row, _ in results}) == 1
    assert sorted(started for _, started in results) == [False, False, True]
    assert len(harness.runtime.started) == 1


def test_reuse_is_not_admission_controlled(tmp_path):
    h = Harness(tmp_path, max_sessions_per_account=1)
    try:
        h.client.post("/v1/workspaces", json={"name": "dev"})
        first = h.client.post("/v1/sessions", json={"workspace": "dev"})
        again = h.client.post("/v1/sessions", json={"workspace": "dev"})  # at the quota, but no new VM
        assert (first.status_code, again.status_code) == (201, 200)
        assert_error(h.client.post("/v1/sessions", json={"ephemeral": True}), 429, "quota_exceeded")
    finally:
        h.close()


# --- what a self-hosted server does not serve: 501 -----------------------------------

def concrete(path: str) -> str:
    return path.replace("{session_id}", "ses_x").replace("{", "").replace("}", "")


def test_every_unavailable_call_is_501_with_its_area(harness):
    calls = [(area, method, path) for area, _, entries in UNAVAILABLE for method, path in entries]
    assert len(calls) == 36  # every call of chaser-sdk 0.2.1 to those areas (the audit log is served)
    for area, method, path in calls:
        response = harness.client.request(method, concrete(path), json={} if method in ("POST", "PATCH") else None)
        body = assert_error(response, 501, "not_implemented")
        assert body["message"] == f"{area} is not available on a self-hosted Chaser server", (method, path)
        unauthenticated = harness.client.request(method, concrete(path), headers={"Authorization": ""})
        assert_error(unauthenticated, 401, "unauthorized")
    spec = harness.client.get("/openapi.json").json()["paths"]
    for area, method, path in calls:
        assert spec[path][method.lower()]["responses"]["501"]["description"].endswith(not_available_message(area))
    # A workspace may still be called "import": only POST …/import is the SDK's GitHub import.
    harness.client.post("/v1/workspaces", json={"name": "import"})
    assert harness.client.get("/v1/workspaces/import").json()["name"] == "import"


def test_the_sdk_methods_of_each_area_get_501(harness):
    sdk, _ = sdk_for(harness)
    calls = {
        "accounts": [sdk.accounts.list, sdk.accounts.current, lambda: sdk.accounts.create_organization("org"),
                     sdk.accounts.members.list, lambda: sdk.accounts.members.add("a@b.c"),
                     lambda: sdk.accounts.members.update("u1", "admin"), lambda: sdk.accounts.members.remove("u1"),
                     sdk.accounts.service_accounts.list, lambda: sdk.accounts.service_accounts.create("bot"),
                     lambda: sdk.accounts.service_accounts.delete("sa1"),
                     lambda: sdk.accounts.service_accounts.keys.list("sa1"),
                     lambda: sdk.accounts.service_accounts.keys.create("sa1", name="k"),
                     lambda: sdk.accounts.service_accounts.keys.revoke("sa1", "k1")],
        "ssh keys": [sdk.ssh_keys.list, lambda: sdk.ssh_keys.create("ssh-ed25519 AAAA"),
                     lambda: sdk.ssh_keys.delete("k1")],
        "billing": [sdk.billing.summary, lambda: sdk.billing.update_account(plan_code="pro"),
                    lambda: sdk.billing.create_checkout(mode="topup")],
        "webhooks": [sdk.webhooks.list, lambda: sdk.webhooks.create(url="https://example.com/hook"),
                     lambda: sdk.webhooks.delete("wh1"), sdk.webhooks.deliveries.list,
                     lambda: sdk.webhooks.deliveries.get("d1"), lambda: sdk.webhooks.deliveries.replay("d1"),
                     lambda: sdk.webhooks.deliveries.discard("d1")],
        "jobs": [sdk.jobs.list_kinds, lambda: sdk.jobs.create(kind="sandbox.exec", input={}), sdk.jobs.list,
                 lambda: sdk.jobs.get("j1"), lambda: sdk.jobs.cancel("j1"), lambda: sdk.jobs.retry("j1"),
                 lambda: sdk.jobs.exec({"command": "ls"})],
        "github": [sdk.github.list_repositories],
        "workspace import from GitHub": [lambda: sdk.workspaces.import_from_github(repo="o/r")],
        "browser CDP": [lambda: sdk.browser.version("ses_x"), lambda: sdk.browser.list_targets("ses_x")],
    }
    for area, methods in calls.items():
        for method in methods:
            with pytest.raises(ChaserApiError) as refused:
                method()
            assert (refused.value.status, refused.value.code) == (501, "not_implemented"), area
            assert str(refused.value) == not_available_message(area)


# --- field types as the SDK types them ------------------------------------------------

def test_fields_follow_the_sdk_types(harness):
    sdk, _ = sdk_for(harness)
    created = sdk.keys.create(name="ci", scopes=["sessions.read"])
    listed = next(key for key in sdk.keys.list() if key["id"] == created["id"])
    assert listed["revoked"] is None  # ApiKeyInfo.revoked is a string: the revocation time, null while valid
    sdk.keys.revoke(created["id"])
    revoked = next(key for key in sdk.keys.list() if key["id"] == created["id"])
    assert isinstance(revoked["revoked"], str) and revoked["revoked"] == revoked["revoked_at"]

    sid = sdk.sessions.create(ephemeral=True)["id"]
    background = sdk.exec.in_session(sid, command="cat", background=True)
    assert background["status"] == "running" and isinstance(background["pid"], int) and "exit_code" not in background
    done = sdk.exec.in_session(sid, command="echo hi")
    assert done["exit_code"] == 0 and isinstance(done["pid"], int)
    listing = sdk.commands.list(sid)
    assert listing and all("output" not in command for command in listing)
    assert all(value is not None for command in listing for value in command.values())
    running = next(command for command in listing if command["command_id"] == background["command_id"])
    assert "exit_code" not in running and "finished_at_epoch" not in running
    assert sdk.commands.get(sid, done["command_id"])["output"] == "hi\n"

    sdk.workspaces.create(name="gone")
    result = sdk.workspaces.bulk_delete({"ids": ["gone", "missing"]})
    by_id = {item["id"]: item for item in result["results"]}
    assert "error" not in next(item for ref, item in by_id.items() if ref != "missing")
    assert isinstance(by_id["missing"]["error"], str)


# --- the audit log ----------------------------------------------------------------------

def test_the_sdk_reads_the_audit_log(harness):
    sdk, _ = sdk_for(harness)
    sid = sdk.sessions.create(ephemeral=True)["id"]
    sdk.exec.in_session(sid, command="echo one")
    events = sdk.audit.list(action="command.exec", resource_type="session", resource_id=sid, status="success")
    assert [event["metadata"]["command"] for event in events] == ["echo one"]
    assert set(events[0]) >= {"id", "actor_type", "actor_id", "action", "resource_type", "resource_id", "status",
                              "summary", "metadata", "created_at"}  # chaser_sdk.types.AuditEventInfo
    first, second = sdk.audit.list(limit=2)
    assert sdk.audit.list(limit=1, before=first["id"]) == [second]
