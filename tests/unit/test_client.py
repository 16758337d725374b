"""chaser.client against httpx.MockTransport: paths, bodies, errors, SSE, files."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
from email.parser import BytesParser
from email.policy import HTTP

import httpx
import pytest

import chaser.client
from chaser.client import (
    ChaserAPIError,
    ChaserClient,
    ChaserConnectionError,
    decode_output,
    get_current_session,
    iter_sse,
    load_config,
    resolve_settings,
    set_current_session,
)


class Recorder:
    """A MockTransport handler: routes `(method, path)` to a response, records requests."""

    def __init__(self, routes: dict | None = None) -> None:
        self.routes = routes or {}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        route = self.routes.get((request.method, request.url.path))
        if route is None:
            return httpx.Response(404, json={"code": "not_found", "message": "no route"}, headers={"x-request-id": "rid-404"})
        return route(request) if callable(route) else route

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def body(self, index: int = -1) -> dict:
        return json.loads(self.requests[index].content)


@pytest.fixture(autouse=True)
def isolated_config(tmp_path, monkeypatch):
    monkeypatch.setenv("CHASER_CONFIG", str(tmp_path / "config.json"))
    monkeypatch.delenv("CHASER_API_URL", raising=False)
    monkeypatch.delenv("CHASER_API_KEY", raising=False)
    return tmp_path / "config.json"


def make(routes: dict) -> tuple[ChaserClient, Recorder]:
    recorder = Recorder(routes)
    client = ChaserClient("http://chaser.test", "secret", transport=httpx.MockTransport(recorder))
    return client, recorder


# --- public surface and configuration ---


def test_public_surface_is_complete():
    public = {name for name in dir(chaser.client) if not name.startswith("_")}
    modules = {"annotations"} | {name for name in public if type(getattr(chaser.client, name)).__name__ == "module"}
    assert set(chaser.client.__all__) == public - modules
    for name in chaser.client.__all__:
        assert getattr(chaser.client, name) is not None
    assert issubclass(ChaserAPIError, chaser.client.ChaserClientError)
    assert issubclass(ChaserConnectionError, chaser.client.ChaserClientError)


def test_settings_resolution_order(isolated_config, monkeypatch):
    assert resolve_settings() == chaser.client.ClientSettings("http://127.0.0.1:8080", None)
    isolated_config.write_text(json.dumps({"api_url": "http://file:1/", "api_key": "file-key"}))
    assert resolve_settings() == chaser.client.ClientSettings("http://file:1", "file-key")
    monkeypatch.setenv("CHASER_API_URL", "http://env:2")
    monkeypatch.setenv("CHASER_API_KEY", "env-key")
    assert resolve_settings() == chaser.client.ClientSettings("http://env:2", "env-key")
    assert resolve_settings("http://arg:3", "arg-key") == chaser.client.ClientSettings("http://arg:3", "arg-key")


def test_config_file_is_private_and_keeps_other_keys(isolated_config):
    isolated_config.write_text(json.dumps({"api_url": "http://x", "api_key": "k"}))
    set_current_session("sess-1")
    assert get_current_session() == "sess-1"
    assert load_config() == {"api_url": "http://x", "api_key": "k", "current_session": "sess-1"}
    assert stat.S_IMODE(os.stat(isolated_config).st_mode) == 0o600
    set_current_session(None)
    assert get_current_session() is None and load_config()["api_key"] == "k"


def test_missing_or_broken_config_is_empty(isolated_config):
    assert load_config() == {}
    isolated_config.write_text("{not json")
    assert load_config() == {} and get_current_session() is None


# --- requests ---


def test_create_session_sends_body_and_bearer_key():
    session = {"id": "s1", "status": "running", "session_type": "sandbox", "endpoints": {"control": "/v1/sessions/s1"}}
    client, rec = make({("POST", "/v1/sessions"): httpx.Response(201, json=session)})
    assert client.sessions.create(ephemeral=True, image="img:1", env={"A": "1"}) == session
    assert rec.last.headers["authorization"] == "Bearer secret"
    assert rec.body() == {"session_type": "sandbox", "ephemeral": True, "image": "img:1", "env": {"A": "1"}}
    client.sessions.create(workspace="dev")
    assert rec.body() == {"session_type": "sandbox", "workspace": "dev"}


def test_sessions_list_get_terminate_bulk_self_test_resize():
    client, rec = make({
        ("GET", "/v1/sessions"): httpx.Response(200, json={"sessions": [{"id": "s1"}], "total": 1}),
        ("GET", "/v1/sessions/s1"): httpx.Response(200, json={"id": "s1"}),
        ("DELETE", "/v1/sessions/s1"): httpx.Response(204),
        ("POST", "/v1/sessions/bulk-terminate"): httpx.Response(200, json={"terminated": ["s1"], "failed": []}),
        ("POST", "/v1/sessions/s1/self-test"): httpx.Response(200, json={"kind": "self_test", "runtime": {"cwd": "/workspace"}}),
        ("POST", "/v1/sessions/s1/resize"): httpx.Response(200, json={}),
    })
    assert client.sessions.list() == [{"id": "s1"}]
    assert client.sessions.list_page()["total"] == 1
    assert client.sessions.get("s1") == {"id": "s1"}
    assert client.sessions.terminate("s1") == {}
    assert "force" not in rec.last.url.params
    client.sessions.terminate("s1", force=True)
    assert rec.last.url.params["force"] == "true"
    assert client.sessions.bulk_terminate(ids=["s1"], force=True) == {"terminated": ["s1"], "failed": []}
    assert rec.body() == {"ids": ["s1"], "force": True}
    client.sessions.bulk_terminate(all=True)
    assert rec.body() == {"all": True}
    assert client.sessions.self_test("s1")["runtime"]["cwd"] == "/workspace"
    client.sessions.resize("s1", rows=40, cols=120)
    assert rec.body() == {"rows": 40, "cols": 120}


def test_ids_are_quoted_in_paths():
    client, rec = make({})
    with pytest.raises(ChaserAPIError):
        client.sessions.get("a/b c")
    assert rec.last.url.raw_path == b"/v1/sessions/a%2Fb%20c"


def test_exec_in_session_and_auto_provision():
    result = {"kind": "exec", "status": "completed", "exit_code": 0, "output": "hi\n", "session_id": "s1"}
    client, rec = make({
        ("POST", "/v1/sessions/s1/exec"): httpx.Response(200, json=result),
        ("POST", "/v1/exec"): httpx.Response(200, json=result),
    })
    assert client.exec.in_session("s1", "echo hi", cwd="/tmp", env={"X": "1"}, timeout_ms=5000) == result
    assert rec.body() == {"command": "echo hi", "cwd": "/tmp", "env": {"X": "1"}, "timeout_ms": 5000}
    client.exec.in_session("s1", "sleep 9", background=True)
    assert rec.body() == {"command": "sleep 9", "background": True}
    client.exec.run("npm test", workspace="dev")
    assert rec.body() == {"command": "npm test", "workspace": "dev"}
    client.exec.run("true", ephemeral=True, image="img", timeout_ms=1000)
    assert rec.body() == {"command": "true", "ephemeral": True, "image": "img", "timeout_ms": 1000}


def test_commands_list_get_stdin_kill():
    base = "/v1/sessions/s1/commands"
    client, rec = make({
        ("GET", base): httpx.Response(200, json={"commands": [{"command_id": "c1"}]}),
        ("GET", f"{base}/c1"): httpx.Response(200, json={"command_id": "c1", "status": "running"}),
        ("POST", f"{base}/c1/stdin"): httpx.Response(200, json={"ok": True}),
        ("POST", f"{base}/c1/kill"): httpx.Response(200, json={"ok": True}),
    })
    assert client.commands.list("s1") == [{"command_id": "c1"}]
    assert client.commands.get("s1", "c1")["status"] == "running"
    client.commands.send_stdin("s1", "c1", "hello\n")
    assert rec.body() == {"input": "hello\n", "encoding": "utf-8"}
    client.commands.send_stdin("s1", "c1", b"\x00\xff", close=True)
    assert rec.body() == {"input": base64.b64encode(b"\x00\xff").decode(), "encoding": "base64", "close": True}
    client.commands.kill("s1", "c1", signal="KILL")
    assert rec.body() == {"signal": "KILL"}
    client.commands.kill("s1", "c1")
    assert rec.body() == {}


def sse(*events: tuple[str, dict]) -> bytes:
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events).encode()


def test_command_stream_yields_decoded_events_until_exit():
    body = b": keep-alive\n\n" + sse(
        ("output", {"offset": 0, "data": "hel", "encoding": "utf-8"}),
        ("output", {"offset": 3, "data": base64.b64encode(b"lo\n").decode(), "encoding": "base64"}),
        ("exit", {"status": "completed", "exit_code": 0}),
        ("output", {"offset": 99, "data": "never", "encoding": "utf-8"}),
    )
    client, rec = make({
        ("GET", "/v1/sessions/s1/commands/c1/stream"): httpx.Response(200, content=body, headers={"content-type": "text/event-stream"}),
    })
    events = list(client.commands.stream("s1", "c1", 0, interval_ms=50))
    assert [e["event"] for e in events] == ["output", "output", "exit"]
    assert b"".join(decode_output(e["data"]) for e in events[:2]) == b"hello\n"
    assert events[2]["data"] == {"status": "completed", "exit_code": 0}
    assert rec.last.url.params["from"] == "0" and rec.last.url.params["interval_ms"] == "50"
    assert rec.last.headers["accept"] == "text/event-stream"
    assert b"".join(client.commands.stream_output("s1", "c1")) == b"hello\n"


def test_command_stream_resumes_from_next_offset_after_a_drop():
    pages = [
        sse(("output", {"offset": 5, "data": "abc", "encoding": "utf-8"})),  # closes without exit
        sse(("output", {"offset": 8, "data": "def", "encoding": "utf-8"}), ("exit", {"status": "completed", "exit_code": 3})),
    ]
    client, rec = make({("GET", "/v1/sessions/s1/commands/c1/stream"): lambda r: httpx.Response(200, content=pages.pop(0))})
    events = list(client.commands.stream("s1", "c1", 5))
    assert [e["data"].get("data") for e in events[:2]] == ["abc", "def"]
    assert events[-1]["data"]["exit_code"] == 3
    assert [r.url.params["from"] for r in rec.requests] == ["5", "8"]


def test_command_stream_error_status_raises_api_error():
    client, _ = make({})
    with pytest.raises(ChaserAPIError) as info:
        list(client.commands.stream("s1", "nope"))
    assert info.value.status == 404 and info.value.code == "not_found" and info.value.request_id == "rid-404"


def test_sse_parser_rules():
    lines = ["event: a", "data: one", "data: two", "", ": comment", "data:x", "id: 7", "", "event: tail", "data: {}"]
    events = list(iter_sse(lines))
    assert [(e.event, e.data, e.id) for e in events] == [("a", "one\ntwo", None), ("message", "x", "7"), ("tail", "{}", "7")]
    assert list(iter_sse(["event: only", ""])) == []  # no data: nothing dispatched
    assert next(iter(iter_sse(["data: crlf\r", "\r"]))).data == "crlf"


# --- files ---


def multipart_fields(request: httpx.Request) -> dict[str, bytes]:
    raw = b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n" + request.content
    message = BytesParser(policy=HTTP).parsebytes(raw)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True) for part in message.iter_parts()}


def test_upload_bytes_path_and_file_object(tmp_path):
    client, rec = make({("POST", "/v1/sessions/s1/upload"): lambda r: httpx.Response(200, json={"path": "/workspace/a", "size": 3})})
    assert client.files.upload("s1", "/workspace/a", b"abc") == {"path": "/workspace/a", "size": 3}
    assert multipart_fields(rec.last) == {"path": b"/workspace/a", "file": b"abc"}
    local = tmp_path / "app.js"
    local.write_bytes(b"\x00" * 200_000)
    client.files.upload("s1", "/workspace/app.js", file=local)
    assert multipart_fields(rec.last)["file"] == b"\x00" * 200_000
    client.files.upload("s1", "/workspace/b", file=io.BytesIO(b"stream"))
    assert multipart_fields(rec.last)["file"] == b"stream"
    with pytest.raises(ValueError):
        client.files.upload("s1", "/x")


def test_upload_too_large_maps_413():
    client, _ = make({("POST", "/v1/sessions/s1/upload"): httpx.Response(413, json={"code": "payload_too_large", "message": "16 MB max"})})
    with pytest.raises(ChaserAPIError) as info:
        client.files.upload("s1", "/big", b"x")
    assert (info.value.status, info.value.code, info.value.message) == (413, "payload_too_large", "16 MB max")


def test_download_bytes_and_streamed_to_file(tmp_path):
    payload = os.urandom(300_000)
    client, rec = make({("GET", "/v1/sessions/s1/download"): httpx.Response(200, content=payload)})
    assert client.files.download("s1", "/workspace/f") == payload
    assert rec.last.url.params["path"] == "/workspace/f"
    dest = tmp_path / "f.bin"
    assert client.files.download_to("s1", "/workspace/f", dest) == len(payload)
    assert dest.read_bytes() == payload and list(tmp_path.iterdir()) == [dest]
    sink = io.BytesIO()
    client.files.download_to("s1", "/workspace/f", sink)
    assert sink.getvalue() == payload


def test_failed_download_leaves_no_file(tmp_path):
    client, _ = make({("GET", "/v1/sessions/s1/download"): httpx.Response(404, json={"code": "file_not_found", "message": "nope"})})
    with pytest.raises(ChaserAPIError) as info:
        client.files.download_to("s1", "/missing", tmp_path / "out")
    assert info.value.code == "file_not_found"
    assert list(tmp_path.iterdir()) == []


# --- keys and workspaces ---


def test_keys_and_workspaces():
    client, rec = make({
        ("GET", "/v1/keys"): httpx.Response(200, json={"keys": [{"id": "k1"}]}),
        ("POST", "/v1/keys"): httpx.Response(201, json={"id": "k2", "key": "chs_x"}),
        ("DELETE", "/v1/keys/k2"): httpx.Response(204),
        ("POST", "/v1/workspaces"): httpx.Response(201, json={"id": "w1", "name": "dev"}),
        ("GET", "/v1/workspaces"): httpx.Response(200, json=[{"id": "w1"}]),
        ("GET", "/v1/workspaces/dev"): httpx.Response(200, json={"id": "w1"}),
        ("DELETE", "/v1/workspaces/dev"): httpx.Response(204),
    })
    assert client.keys.list() == [{"id": "k1"}]
    assert client.keys.create(name="ci", scopes=["sessions:write"])["key"] == "chs_x"
    assert rec.body() == {"name": "ci", "scopes": ["sessions:write"]}
    assert client.keys.revoke("k2") == {}
    assert client.workspaces.create(name="dev", image="img")["id"] == "w1"
    assert rec.body() == {"name": "dev", "session_type": "sandbox", "image": "img"}
    assert client.workspaces.list() == [{"id": "w1"}]
    assert client.workspaces.get("dev") == {"id": "w1"}
    client.workspaces.delete("dev", force=True)
    assert rec.last.url.params["force"] == "true"


# --- errors ---


def test_api_error_carries_status_code_message_request_id():
    client, _ = make({("GET", "/v1/sessions/s1"): httpx.Response(
        409, json={"code": "conflict", "message": "session is terminating"}, headers={"x-request-id": "req-1"})})
    with pytest.raises(ChaserAPIError) as info:
        client.sessions.get("s1")
    error = info.value
    assert (error.status, error.code, error.message, error.request_id) == (409, "conflict", "session is terminating", "req-1")
    assert str(error) == "session is terminating"


def test_api_error_without_json_body():
    client, _ = make({("GET", "/v1/keys"): httpx.Response(502, text="Bad Gateway")})
    with pytest.raises(ChaserAPIError) as info:
        client.keys.list()
    assert (info.value.status, info.value.code, info.value.message, info.value.request_id) == (502, "server_error", "Bad Gateway", None)


def test_connection_failure_is_mapped():
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    client = ChaserClient("http://chaser.test", transport=httpx.MockTransport(refuse))
    with pytest.raises(ChaserConnectionError) as info:
        client.sessions.list()
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert "http://chaser.test" in info.value.message
    with pytest.raises(ChaserConnectionError):
        list(client.commands.stream("s1", "c1", reconnect=0))


def test_no_key_sends_no_authorization_and_ws_urls():
    client, rec = make({("GET", "/v1/keys"): httpx.Response(200, json={"keys": []})})
    anonymous = ChaserClient("https://api.example.com/", transport=httpx.MockTransport(rec))
    anonymous.keys.list()
    assert "authorization" not in rec.last.headers
    assert anonymous.sessions.pty_url("s1", mode="agent") == "wss://api.example.com/v1/sessions/s1/pty?mode=agent"
    assert client.ws_url("/x") == "ws://chaser.test/x"
    assert client.auth_headers() == {"Authorization": "Bearer secret"}
