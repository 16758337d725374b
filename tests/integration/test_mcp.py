"""`POST /v1/mcp` end to end: a real `chaser server`, one real workspace microVM.

- the exact curl body from the reference page, sent by httpx with no SSE Accept and no
  session header → a JSON-RPC result carrying session_id/workspace_id and the output;
- the official MCP SDK client (streamable HTTP + ClientSession): initialize, tools/list,
  and a terminal xml write_file/apply_edit/read_file round trip in the same session;
- `terminal` with `ephemeral: true`: the returned session_id serves follow-up calls until
  session_terminate.
"""

from __future__ import annotations

import json

import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

pytestmark = pytest.mark.vm

# The body of the reference page's curl, verbatim.
REFERENCE_BODY = """{
    "jsonrpc": "2.0", "id": 1, "method": "tools/call",
    "params": {"name": "terminal", "arguments": {"workspace": "dev", "command": "git status"}}
  }"""


@pytest.fixture(scope="module")
def dev(server):
    """The workspace "dev"; its session is force-terminated at the end."""
    with server.client() as http:
        response = http.post("/v1/workspaces", json={"name": "dev"})
        assert response.status_code == 200, response.text
        workspace = response.json()
        yield workspace
        http.post("/v1/sessions/bulk-terminate", json={"workspaces": [workspace["id"]], "force": True})


def curl_like(server, body: str, **extra_headers: str) -> httpx.Response:
    """What `curl -H Authorization -H Content-Type -d` sends: curl's own Accept is `*/*`; send none at all."""
    with httpx.Client(timeout=900) as http:
        request = http.build_request("POST", f"{server.url}/v1/mcp", content=body.encode(), headers={
            "Authorization": f"Bearer {server.api_key}", "Content-Type": "application/json", **extra_headers})
        del request.headers["accept"]
        return http.send(request)


def test_reference_curl_gets_json_with_session_and_workspace(server, dev):
    response = curl_like(server, REFERENCE_BODY)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "mcp-session-id" not in response.headers
    message = response.json()
    assert message["jsonrpc"] == "2.0" and message["id"] == 1
    result = message["result"]
    # There is no git repository in /workspace: git exits 128. Reported, not a tool error.
    assert result["isError"] is False, result
    structured = result["structuredContent"]
    assert structured["exit_code"] == 128, structured
    assert structured["status"] == "failed"
    assert "not a git repository" in structured["output"]
    assert structured["workspace_id"] == dev["id"]
    assert structured["session_id"].startswith("ses_")
    header, _, rest = result["content"][0]["text"].partition("\n")
    assert json.loads(header) == {"session_id": structured["session_id"], "workspace_id": dev["id"],
                                  "exit_code": 128, "status": "failed", "output_truncated": False}
    assert "not a git repository" in rest

    # A follow-up reuses the workspace's running session.
    again = curl_like(server, json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "terminal", "arguments": {"workspace": "dev", "command": "git --version && echo mcp-ok"}}}),
        Accept="*/*").json()["result"]
    assert again["isError"] is False
    assert again["structuredContent"]["exit_code"] == 0
    assert "git version" in again["structuredContent"]["output"]
    assert "mcp-ok" in again["structuredContent"]["output"]
    assert again["structuredContent"]["session_id"] == structured["session_id"]


def test_missing_key_is_401(server):
    response = httpx.post(f"{server.url}/v1/mcp", content=REFERENCE_BODY,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"


async def test_sdk_client_initialize_list_and_xml_round_trip(server, dev):
    headers = {"Authorization": f"Bearer {server.api_key}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(900, connect=10)) as http:  # noqa: SIM117 - each context takes the one before
        async with streamable_http_client(f"{server.url}/v1/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                assert init.server_info.name == "chaser"
                tools = {tool.name for tool in (await session.list_tools()).tools}
                assert {"terminal", "sessions_list", "session_create", "session_terminate",
                        "workspaces_list", "workspace_create"} <= tools

                xml = ('<write_file path="mcp/hello.py">\nif 1 < 2 and "a" != "b":\n    print("hello")\n'
                       '</write_file>\n'
                       '<apply_edit path="mcp/hello.py"><search>print("hello")</search>'
                       '<replace>print("hello, edited")</replace></apply_edit>\n'
                       '<read_file path="mcp/hello.py"/>\n<list_files path="mcp"/>')
                written = await session.call_tool("terminal", {"workspace": "dev", "xml": xml})
                assert not written.is_error, written.content[0].text
                ops = written.structured_content["operations"]
                assert [op["ok"] for op in ops] == [True, True, True, True]
                assert ops[2]["content"] == 'if 1 < 2 and "a" != "b":\n    print("hello, edited")\n'
                assert "hello.py" in ops[3]["listing"]
                session_id = written.structured_content["session_id"]
                assert written.structured_content["workspace_id"] == dev["id"]

                # The file is really there for a command in the same session.
                ran = await session.call_tool("terminal", {"session_id": session_id,
                                                           "command": "python3 mcp/hello.py || sh -c 'cat mcp/hello.py'"})
                assert not ran.is_error
                assert "hello, edited" in ran.structured_content["output"]

                # An edit whose search text is absent fails that operation only, and writes nothing.
                missing = await session.call_tool("terminal", {"session_id": session_id, "xml": (
                    '<apply_edit path="mcp/hello.py"><search>no such text</search><replace>x</replace></apply_edit>'
                    '<read_file path="mcp/hello.py"/>')})
                assert missing.is_error
                ops = missing.structured_content["operations"]
                assert ops[0]["error"]["code"] == "edit_failed"
                assert ops[1]["content"] == 'if 1 < 2 and "a" != "b":\n    print("hello, edited")\n'


async def test_sdk_client_ephemeral_session_serves_follow_up_calls(server):
    """`terminal` with `ephemeral: true` leaves its session running: the session_id it returns
    works in a follow-up call (which sees the first call's file) until session_terminate."""
    headers = {"Authorization": f"Bearer {server.api_key}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(900, connect=10)) as http:  # noqa: SIM117 - each context takes the one before
        async with streamable_http_client(f"{server.url}/v1/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                first = await session.call_tool("terminal", {
                    "ephemeral": True, "command": "echo scratch-state > /workspace/note.txt && echo written"})
                assert not first.is_error, first.content[0].text
                structured = first.structured_content
                assert structured["exit_code"] == 0 and "written" in structured["output"]
                assert structured["ephemeral"] is True and structured["workspace_id"] is None
                session_id = structured["session_id"]
                assert json.loads(first.content[0].text.partition("\n")[0])["session_id"] == session_id
                try:
                    listed = await session.call_tool("sessions_list", {})
                    running = {s["id"]: s for s in listed.structured_content["sessions"]}
                    assert running[session_id]["status"] == "running" and running[session_id]["ephemeral"]

                    follow = await session.call_tool("terminal", {"session_id": session_id,
                                                                  "command": "cat /workspace/note.txt"})
                    assert not follow.is_error, follow.content[0].text
                    assert follow.structured_content["session_id"] == session_id
                    assert follow.structured_content["output"] == "scratch-state\n"

                    read_back = await session.call_tool("terminal", {"session_id": session_id,
                                                                     "xml": '<read_file path="note.txt"/>'})
                    assert read_back.structured_content["operations"][0]["content"] == "scratch-state\n"
                finally:
                    ended = await session.call_tool("session_terminate", {"session_id": session_id})
                assert not ended.is_error and ended.structured_content["status"] == "terminated"
                gone = await session.call_tool("terminal", {"session_id": session_id, "command": "true"})
                assert gone.is_error
                assert gone.structured_content["error"]["code"] == "session_not_running"
