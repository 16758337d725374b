"""MCP endpoint units: xml file-op parsing, apply_edit, Accept normalisation, auth, the
tools against a mocked REST API (httpx.MockTransport), and the ASGI app in process."""

from __future__ import annotations

import ast
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from chaser.client import ChaserClient
from chaser.mcp.arguments import parse_terminal_arguments
from chaser.mcp.asgi import MCPEndpoint, bearer_token, loopback_base_url, normalize_accept
from chaser.mcp.files import EditError, FileOp, XmlOpsError, apply_edits, parse_xml_ops
from chaser.mcp.registry import call_tool

MCP_DIR = Path(__file__).resolve().parents[2] / "chaser" / "mcp"
KEY = "sk_test_key"


# --- imports ------------------------------------------------------------------------------------

def test_mcp_package_imports_only_the_client():
    for path in MCP_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name.startswith("chaser."):
                    assert name.startswith(("chaser.client", "chaser.mcp")), f"{path.name} imports {name}"


# --- xml operations -----------------------------------------------------------------------------

def test_parse_all_operations():
    ops = parse_xml_ops(
        '<read_file path="a.txt"/>\n'
        '<write_file path="b.txt">hello\nworld\n</write_file>\n'
        '<apply_edit path="c.py"><search>old</search><replace>new</replace>'
        '<search>x = 1</search><replace></replace></apply_edit>\n'
        '<list_files path="src" recursive="true"/><list_files/>'
    )
    assert ops == [
        FileOp("read_file", "a.txt"),
        FileOp("write_file", "b.txt", content="hello\nworld\n"),
        FileOp("apply_edit", "c.py", edits=[("old", "new"), ("x = 1", "")]),
        FileOp("list_files", "src", recursive=True),
        FileOp("list_files", "."),
    ]


def test_parse_drops_one_leading_newline_and_keeps_the_rest():
    (op,) = parse_xml_ops('<write_file path="a">\n\n  indented\n</write_file>')
    assert op.content == "\n  indented\n"
    (edit,) = parse_xml_ops('<apply_edit path="a"><search>\nfoo\n</search><replace>\nbar\n</replace></apply_edit>')
    assert edit.edits == [("foo\n", "bar\n")]


def test_parse_escaped_cdata_and_unescaped_code():
    (escaped,) = parse_xml_ops('<write_file path="a">if a &lt; b &amp;&amp; c: pass</write_file>')
    assert escaped.content == "if a < b && c: pass"
    (cdata,) = parse_xml_ops('<write_file path="a"><![CDATA[<div>&nbsp;</div>]]></write_file>')
    assert cdata.content == "<div>&nbsp;</div>"
    # Not well-formed as written: the lenient retry treats the bodies as text.
    ops = parse_xml_ops('<write_file path="a">if a < b && c:\n    x = "<tag>"\n</write_file>'
                        '<apply_edit path="a"><search>a < b</search><replace>a <= b & 1</replace></apply_edit>')
    assert ops[0].content == 'if a < b && c:\n    x = "<tag>"\n'
    assert ops[1].edits == [("a < b", "a <= b & 1")]


@pytest.mark.parametrize("xml, message", [
    ("", "empty"),
    ("<delete_file path='a'/>", "unknown operation"),
    ("<read_file/>", "needs a path"),
    ("<write_file>x</write_file>", "needs a path"),
    ("stray <read_file path='a'/>", "outside"),
    ("<read_file path='a'/> stray", "after"),
    ("<apply_edit path='a'><search>x</search></apply_edit>", "pairs"),
    ("<apply_edit path='a'><replace>x</replace><search>y</search></apply_edit>", "pairs"),
    ("<apply_edit path='a'></apply_edit>", "no <search>"),
    ("<apply_edit path='a'><search></search><replace>y</replace></apply_edit>", "empty"),
    ("<read_file path='a'", "not well-formed"),
])
def test_parse_errors(xml, message):
    with pytest.raises(XmlOpsError, match=message):
        parse_xml_ops(xml)


# --- apply_edit -----------------------------------------------------------------------------------

def test_apply_edits_exactly_once_in_order():
    assert apply_edits("a = 1\nb = 2\n", [("a = 1", "a = 10"), ("a = 10\nb", "c")]) == "c = 2\n"


@pytest.mark.parametrize("text, count", [("nothing here", 0), ("x x", 2)])
def test_apply_edits_not_exactly_once(text, count):
    with pytest.raises(EditError, match=f"found {count} times"):
        apply_edits(text, [("x", "y")])


def test_apply_edits_names_the_failing_pair():
    with pytest.raises(EditError, match="#2 found 0 times"):
        apply_edits("abc", [("a", "z"), ("a", "y")])


# --- arguments ------------------------------------------------------------------------------------

@pytest.mark.parametrize("arguments, message", [
    ({"command": "ls"}, "give `workspace`"),
    ({"workspace": "dev", "session_id": "ses_1", "command": "ls"}, "only one of"),
    ({"workspace": "dev", "ephemeral": True, "command": "ls"}, "only one of"),
    ({"workspace": "dev"}, "either `command`"),
    ({"workspace": "dev", "command": "ls", "xml": "<list_files/>"}, "not both"),
    ({"workspace": "dev", "command": "ls", "cmd": "pwd"}, "not both"),
    ({"workspace": "dev", "command": "ls", "shell": "bash"}, "unknown argument"),
    ({"workspace": 3, "command": "ls"}, "must be a string"),
    ({"workspace": "dev", "command": "ls", "timeout_ms": 0}, ">= 1"),
    ({"workspace": "dev", "command": "ls", "timeout_ms": True}, "must be a integer"),
    ({"workspace": "dev", "xml": "<nope/>"}, "unknown operation"),
])
def test_terminal_argument_errors(arguments, message):
    result = call_tool(lambda: pytest.fail("no API call expected"), "terminal", arguments)
    assert result.is_error
    assert result.structured_content["error"]["code"] == "invalid_arguments"
    assert message in result.structured_content["error"]["message"]


def test_terminal_arguments_cmd_alias_and_ephemeral_false():
    request = parse_terminal_arguments({"workspace": "dev", "cmd": "ls", "ephemeral": False, "cwd": "/tmp"})
    assert (request.target, request.command, request.cwd) == ("workspace", "ls", "/tmp")


# --- tools against a mocked REST API --------------------------------------------------------------

class FakeAPI:
    """Records requests; answers like the Chaser API."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.files: dict[str, bytes] = {"/workspace/app.py": b"x = 1\nprint(x)\n"}
        self.exit_code = 0

    def factory(self):
        return lambda: ChaserClient(base_url="http://api.test", api_key=KEY, transport=httpx.MockTransport(self))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.headers["authorization"] == f"Bearer {KEY}"
        path = request.url.path
        if path == "/v1/sessions" and request.method == "POST":
            body = json.loads(request.content)
            assert body.get("ephemeral") is True
            return httpx.Response(200, json={"id": "ses_eph", "workspace_id": None, "status": "running"})
        if path == "/v1/sessions/ses_eph/exec":
            body = json.loads(request.content)
            return httpx.Response(200, json={
                "kind": "sandbox_exec", "status": "completed", "session_id": "ses_eph", "workspace_id": None,
                "command": body["command"], "exit_code": 0, "output": f"ran {body['command']}\n",
                "output_truncated": False})
        if path == "/v1/exec" or path.endswith("/exec"):
            body = json.loads(request.content)
            if body.get("workspace") == "missing":
                return httpx.Response(404, json={"code": "workspace_not_found", "message": "no workspace 'missing'"})
            exit_code = 0 if body["command"] == ":" else self.exit_code
            return httpx.Response(200, json={
                "kind": "sandbox_exec", "status": "completed" if exit_code == 0 else "failed",
                "session_id": "ses_1", "workspace_id": None if body.get("ephemeral") else "ws_1",
                "command": body["command"], "exit_code": exit_code,
                "output": f"ran {body['command']}\n", "output_truncated": False})
        if path == "/v1/sessions/ses_1/download":
            name = self._abs(request.url.params["path"])
            if name not in self.files:
                return httpx.Response(404, json={"code": "file_not_found", "message": f"no file {name}"})
            return httpx.Response(200, content=self.files[name])
        if path == "/v1/sessions/ses_1/upload":
            text = request.read().decode("latin-1")
            name = self._abs(text.split('name="path"\r\n\r\n', 1)[1].split("\r\n", 1)[0])
            content = text.split('filename="', 1)[1].split("\r\n\r\n", 1)[1].rsplit("\r\n--", 1)[0]
            self.files[name] = content.encode("latin-1")
            return httpx.Response(200, json={"path": name, "size": len(self.files[name])})
        if path == "/v1/sessions/ses_1":
            return httpx.Response(200, json={"id": "ses_1", "workspace_id": "ws_1", "status": "running"})
        if path == "/v1/workspaces":
            return httpx.Response(200, json=[{"id": "ws_1", "name": "dev"}])
        return httpx.Response(404, json={"code": "not_found", "message": "no such endpoint"})

    @staticmethod
    def _abs(path: str) -> str:
        return path if path.startswith("/") else f"/workspace/{path}"


def test_terminal_command_in_workspace():
    api = FakeAPI()
    result = call_tool(api.factory(), "terminal", {"workspace": "dev", "command": "git status", "cwd": "/tmp"})
    assert not result.is_error
    sent = json.loads(api.requests[0].content)
    assert sent == {"command": "git status", "workspace": "dev", "cwd": "/tmp"}
    assert result.structured_content == {"session_id": "ses_1", "workspace_id": "ws_1", "exit_code": 0,
                                         "status": "completed", "output": "ran git status\n",
                                         "output_truncated": False, "ephemeral": False}
    first, rest = result.content[0].text.split("\n", 1)
    assert json.loads(first) == {"session_id": "ses_1", "workspace_id": "ws_1", "exit_code": 0,
                                 "status": "completed", "output_truncated": False}
    assert rest == "ran git status\n"


def test_terminal_nonzero_exit_is_not_a_tool_error():
    api = FakeAPI()
    api.exit_code = 128
    result = call_tool(api.factory(), "terminal", {"session_id": "ses_1", "cmd": "git status"})
    assert not result.is_error
    assert (result.structured_content["exit_code"], result.structured_content["status"]) == (128, "failed")
    assert api.requests[0].url.path == "/v1/sessions/ses_1/exec"


def test_terminal_ephemeral_starts_a_session_that_stays():
    """Not POST /v1/exec with ephemeral (which terminates): create, exec, and nothing else, so the
    returned session_id can be used in follow-up calls."""
    api = FakeAPI()
    result = call_tool(api.factory(), "terminal", {"ephemeral": True, "command": "echo hi"})
    assert not result.is_error, result.content[0].text
    assert [(r.method, r.url.path) for r in api.requests] == [
        ("POST", "/v1/sessions"), ("POST", "/v1/sessions/ses_eph/exec")]
    assert json.loads(api.requests[0].content) == {"session_type": "sandbox", "ephemeral": True}
    assert result.structured_content["session_id"] == "ses_eph"
    assert result.structured_content["workspace_id"] is None and result.structured_content["ephemeral"]

    xml = call_tool(api.factory(), "terminal", {"ephemeral": True, "xml": '<list_files path="."/>'})
    assert xml.structured_content["session_id"] == "ses_eph"
    assert not any(r.method == "DELETE" for r in api.requests)


def test_terminal_ephemeral_exec_failure_terminates_the_new_session():
    api = FakeAPI()
    inner = api.__call__

    def failing(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/sessions/ses_eph/exec":
            api.requests.append(request)
            return httpx.Response(503, json={"code": "vm_crashed", "message": "the VM died"})
        if request.method == "DELETE":
            api.requests.append(request)
            return httpx.Response(200, json={"id": "ses_eph", "status": "terminated"})
        return inner(request)

    factory = lambda: ChaserClient(base_url="http://api.test", api_key=KEY,  # noqa: E731
                                   transport=httpx.MockTransport(failing))
    result = call_tool(factory, "terminal", {"ephemeral": True, "command": "echo hi"})
    assert result.is_error and result.structured_content["error"]["code"] == "vm_crashed"
    assert (api.requests[-1].method, api.requests[-1].url.path) == ("DELETE", "/v1/sessions/ses_eph")


def test_terminal_api_error_is_a_tool_error():
    result = call_tool(FakeAPI().factory(), "terminal", {"workspace": "missing", "command": "ls"})
    assert result.is_error
    assert result.structured_content["error"]["code"] == "workspace_not_found"
    assert result.content[0].text == "error: workspace_not_found: no workspace 'missing'"


def test_terminal_xml_round_trip_over_upload_and_download():
    api = FakeAPI()
    xml = ('<write_file path="notes.txt">one\ntwo\n</write_file>'
           '<apply_edit path="notes.txt"><search>two</search><replace>2</replace></apply_edit>'
           '<read_file path="notes.txt"/>')
    result = call_tool(api.factory(), "terminal", {"workspace": "dev", "xml": xml})
    assert not result.is_error, result.content[0].text
    assert api.files["/workspace/notes.txt"] == b"one\n2\n"
    ops = result.structured_content["operations"]
    assert [op["op"] for op in ops] == ["write_file", "apply_edit", "read_file"]
    assert ops[2]["content"] == "one\n2\n"
    assert result.structured_content["session_id"] == "ses_1"
    assert result.structured_content["exit_code"] == 0
    # Resolved through POST /v1/exec ":" (reuse or start), then only file endpoints: no `cat`.
    commands = [json.loads(r.content)["command"] for r in api.requests if r.url.path.endswith("exec")]
    assert commands == [":"]
    assert '<read_file path="notes.txt" size="6" status="ok">\none\n2\n\n</read_file>' in result.content[0].text


def test_terminal_xml_edit_not_found_is_an_op_error_and_writes_nothing():
    api = FakeAPI()
    xml = ('<apply_edit path="app.py"><search>y = 2</search><replace>z</replace></apply_edit>'
           '<read_file path="missing.txt"/><read_file path="app.py"/>')
    result = call_tool(api.factory(), "terminal", {"session_id": "ses_1", "xml": xml, "cwd": "/workspace"})
    assert result.is_error
    ops = result.structured_content["operations"]
    assert ops[0]["error"]["code"] == "edit_failed" and "found 0 times" in ops[0]["error"]["message"]
    assert ops[1]["error"]["code"] == "file_not_found"
    assert ops[2]["ok"] and ops[2]["content"] == "x = 1\nprint(x)\n"
    assert result.structured_content["exit_code"] == 1
    assert not any(r.url.path.endswith("/upload") for r in api.requests)
    assert api.files["/workspace/app.py"] == b"x = 1\nprint(x)\n"


def test_terminal_xml_list_files_quotes_the_path():
    api = FakeAPI()
    result = call_tool(api.factory(), "terminal", {"workspace": "dev", "xml": "<list_files path=\"my dir\"/>"})
    assert not result.is_error
    commands = [json.loads(r.content)["command"] for r in api.requests if r.url.path.endswith("exec")]
    assert commands == [":", "ls -la -- 'my dir'"]


def test_workspaces_list_wraps_the_list():
    result = call_tool(FakeAPI().factory(), "workspaces_list", {})
    assert result.structured_content == {"workspaces": [{"id": "ws_1", "name": "dev"}]}


def test_session_terminate_requires_session_id():
    result = call_tool(FakeAPI().factory(), "session_terminate", {})
    assert result.is_error and "session_id is required" in result.content[0].text


# --- the ASGI app ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (None, "application/json"),
    ("", "application/json"),
    ("*/*", "*/*"),
    ("application/json", "application/json"),
    ("application/json, text/event-stream", "application/json, text/event-stream"),
    ("text/event-stream", "text/event-stream, application/json"),
    ("text/html", "text/html, application/json"),
])
def test_normalize_accept(value, expected):
    assert normalize_accept(value) == expected


def test_bearer_token():
    assert bearer_token("Bearer sk_x") == "sk_x"
    assert bearer_token("bearer  sk_x ") == "sk_x"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None


def test_loopback_base_url():
    assert loopback_base_url({"scheme": "http", "server": ("127.0.0.1", 8080), "headers": []}) == "http://127.0.0.1:8080"
    assert loopback_base_url({"scheme": "https", "server": ("::1", 9), "headers": []}) == "http://[::1]:9"
    assert loopback_base_url({"scheme": "http", "server": None,
                              "headers": [(b"host", b"example:1")]}) == "http://example:1"


def _endpoint(valid: set[str] = frozenset({KEY})) -> MCPEndpoint:
    class Unauthorized(Exception):
        status, code, message = 401, "unauthorized", "invalid or revoked API key"

    def authenticate(token: str) -> None:
        if token not in valid:
            raise Unauthorized()

    return MCPEndpoint(authenticate=authenticate, api_base_url="http://api.invalid")


async def _post(endpoint: MCPEndpoint, body, headers: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=endpoint)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.post("/v1/mcp", content=json.dumps(body), headers=headers)


TOOLS_LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


async def test_missing_key_is_401():
    response = await _post(_endpoint(), TOOLS_LIST, {"Content-Type": "application/json"})
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


async def test_wrong_scheme_and_bad_key_are_401():
    for auth in ("Basic abc", "Bearer sk_wrong"):
        response = await _post(_endpoint(), TOOLS_LIST, {"Content-Type": "application/json", "Authorization": auth})
        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized"


async def test_plain_json_post_without_accept_gets_json():
    endpoint = _endpoint()
    transport = httpx.ASGITransport(app=endpoint)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        request = client.build_request("POST", "/v1/mcp", content=json.dumps(TOOLS_LIST),
                                       headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
        del request.headers["accept"]
        response = await client.send(request)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "mcp-session-id" not in response.headers
    names = [tool["name"] for tool in response.json()["result"]["tools"]]
    assert names[0] == "terminal" and "session_create" in names


async def test_sse_only_accept_still_gets_json_initialize():
    body = {"jsonrpc": "2.0", "id": 7, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    response = await _post(_endpoint(), body, {"Content-Type": "application/json", "Accept": "text/event-stream",
                                               "Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    assert response.json()["result"]["serverInfo"]["name"] == "chaser"


async def test_get_is_405():
    transport = httpx.ASGITransport(app=_endpoint())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/v1/mcp", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


async def test_app_mounts_v1_mcp(tmp_path, monkeypatch):
    monkeypatch.setenv("CHASER_HOME", str(tmp_path))
    from chaser.assembly import create_app
    from chaser.config import Settings

    app = create_app(Settings(home=tmp_path, config_file=tmp_path / "config.json"), runtime=object())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post("/v1/mcp", json=TOOLS_LIST)
        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized"
        assert "x-request-id" in response.headers
        response = await client.post("/v1/mcp", json=TOOLS_LIST, headers={"Authorization": "Bearer sk_nope"})
        assert response.status_code == 401
        assert response.json() == {"code": "unauthorized", "message": "invalid or revoked API key"}


# --- the whole path in process: uvicorn + create_app over the fake runtime ------------------------

@pytest.fixture
def live_api(tmp_path):
    """A real HTTP server (the tools call it back over loopback) with fake VMs."""
    import uvicorn

    from chaser.assembly import create_app
    from tests.support import FakeRuntime, make_settings

    app = create_app(make_settings(tmp_path), FakeRuntime(), reaper_interval=3600)
    key = app.state.services.keys.create(name="admin", full_access=True).key
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", key, app.state.services
    server.should_exit = True
    thread.join(20)


def _rpc(base: str, key: str, name: str, arguments: dict, **headers: str) -> dict:
    response = httpx.post(f"{base}/v1/mcp", timeout=30,
                          headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers},
                          content=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                              "params": {"name": name, "arguments": arguments}}))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()["result"]


def test_tools_call_through_the_real_app(live_api):
    base, key, services = live_api
    created = _rpc(base, key, "workspace_create", {"name": "dev"})
    assert not created["isError"] and created["structuredContent"]["name"] == "dev"

    result = _rpc(base, key, "terminal", {"workspace": "dev", "command": "echo hello"})
    assert not result["isError"], result
    structured = result["structuredContent"]
    assert structured["output"] == "hello\n" and structured["exit_code"] == 0
    assert structured["workspace_id"] == created["structuredContent"]["id"]
    assert structured["session_id"].startswith("ses_")
    assert json.loads(result["content"][0]["text"].split("\n", 1)[0])["session_id"] == structured["session_id"]

    again = _rpc(base, key, "terminal", {"workspace": "dev", "cmd": "exit 3"})
    assert not again["isError"]
    assert again["structuredContent"]["exit_code"] == 3
    assert again["structuredContent"]["session_id"] == structured["session_id"]  # reused

    xml = ('<write_file path="a.txt">one\ntwo\n</write_file>'
           '<apply_edit path="a.txt"><search>two</search><replace>2</replace></apply_edit><read_file path="a.txt"/>')
    files = _rpc(base, key, "terminal", {"session_id": structured["session_id"], "xml": xml})
    assert not files["isError"], files
    assert files["structuredContent"]["operations"][2]["content"] == "one\n2\n"
    vm = services.sessions.live[structured["session_id"]].vm
    assert vm.files["/workspace/a.txt"] == b"one\n2\n"

    listed = _rpc(base, key, "sessions_list", {})
    assert [s["id"] for s in listed["structuredContent"]["sessions"]] == [structured["session_id"]]
    ended = _rpc(base, key, "session_terminate", {"session_id": structured["session_id"]})
    assert ended["structuredContent"]["status"] == "terminated"
    gone = _rpc(base, key, "terminal", {"session_id": structured["session_id"], "command": "echo x"})
    assert gone["isError"] and gone["structuredContent"]["error"]["code"] == "session_not_running"


def test_tools_use_the_callers_key_and_scopes(live_api):
    base, _key, services = live_api
    reader = services.keys.create(name="reader", scopes=["sessions.read"]).key
    result = _rpc(base, reader, "terminal", {"ephemeral": True, "command": "echo hi"})
    assert result["isError"] and result["structuredContent"]["error"]["code"] == "forbidden"
    assert not _rpc(base, reader, "sessions_list", {})["isError"]
    foreign = _rpc(base, reader, "sessions_list", {}, **{"X-Chaser-Account": "someone-else"})
    assert foreign["isError"] and foreign["structuredContent"]["error"]["code"] == "forbidden"


async def test_sdk_client_against_the_real_app(live_api):
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    base, key, _services = live_api
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:  # noqa: SIM117 - each context takes the one before
        async with streamable_http_client(f"{base}/v1/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = await session.list_tools()
                assert "terminal" in [tool.name for tool in tools.tools]
                result = await session.call_tool("terminal", {"ephemeral": True, "command": "echo sdk"})
    assert not result.is_error
    assert result.structured_content["output"] == "sdk\n"


def test_pause_resume_and_fork_tools_through_the_real_app(live_api):
    base, key, services = live_api
    session = _rpc(base, key, "session_create", {"ephemeral": True})["structuredContent"]
    paused = _rpc(base, key, "chaser_pause_session", {"session_id": session["id"]})
    assert not paused["isError"] and paused["structuredContent"]["status"] == "paused", paused
    again = _rpc(base, key, "chaser_pause_session", {"session_id": session["id"]})
    assert again["isError"] and again["structuredContent"]["error"]["code"] == "session_not_running"
    resumed = _rpc(base, key, "chaser_resume_session", {"session_id": session["id"]})
    assert resumed["structuredContent"]["status"] == "running"
    forked = _rpc(base, key, "chaser_fork_session", {"session_id": session["id"], "count": 2})
    assert not forked["isError"], forked
    forks = forked["structuredContent"]["sessions"]
    assert forked["structuredContent"]["source_id"] == session["id"] and len(forks) == 2
    assert all(f["id"] in services.sessions.live for f in forks)
    bad = _rpc(base, key, "chaser_fork_session", {"session_id": session["id"], "count": "two"})
    assert bad["isError"] and bad["structuredContent"]["error"]["code"] == "invalid_arguments"
    for sid in [session["id"], *(f["id"] for f in forks)]:
        _rpc(base, key, "session_terminate", {"session_id": sid})
