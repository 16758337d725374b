"""`chaser mcp serve` end to end: the official MCP client over stdio, a real `chaser server`.

The agent configuration `chaser mcp install --print` produces is what launches the server
(command, args, env), as Claude Code / Cursor / Codex would. Over that stdio connection:
initialize, list the tools, run a command with `terminal`, then follow up in the session it
returned, and terminate that session.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from tests.integration.conftest import REPO

pytestmark = pytest.mark.vm

CHASER = REPO / ".venv" / "bin" / "chaser"
TOOLS = {"terminal", "sessions_list", "session_create", "session_terminate", "workspaces_list", "workspace_create",
         "chaser_pause_session", "chaser_resume_session", "chaser_fork_session"}


def agent_config(server, tmp_path: Path) -> dict:
    """The mcpServers entry `chaser mcp install --agent claude --print --embed-key` writes."""
    env = {**os.environ, "CHASER_CONFIG": str(tmp_path / "no-such-config.json")}
    env.pop("CHASER_API_URL", None)
    env.pop("CHASER_API_KEY", None)
    out = subprocess.run([str(CHASER), "--api-url", server.url, "--api-key", server.api_key, "mcp", "install",
                          "--agent", "claude", "--print", "--embed-key"],
                         env=env, capture_output=True, text=True, timeout=60, check=True)
    entry = json.loads(out.stdout)["mcpServers"]["chaser"]
    assert entry["command"] == str(CHASER) and entry["args"] == ["mcp", "serve"]
    assert entry["env"]["CHASER_API_URL"] == server.url and entry["env"]["CHASER_API_KEY"] == server.api_key
    return entry


async def test_stdio_list_tools_run_and_follow_up(server, tmp_path):
    entry = agent_config(server, tmp_path)
    params = StdioServerParameters(command=entry["command"], args=entry["args"], env=entry["env"], cwd=str(tmp_path))
    session_id = None
    with open(tmp_path / "serve.stderr", "w") as errlog:  # noqa: ASYNC230 - a local log file
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            init = await session.initialize()
            assert init.server_info.name == "chaser"
            tools = {tool.name for tool in (await session.list_tools()).tools}
            assert tools == TOOLS

            try:
                first = await session.call_tool("terminal", {
                    "ephemeral": True, "command": "cd /workspace && echo from-stdio > state.txt && uname -s"})
                assert not first.is_error, first.content[0].text
                assert first.structured_content["exit_code"] == 0
                assert first.structured_content["output"] == "Linux\n"
                session_id = first.structured_content["session_id"]
                assert session_id.startswith("ses_")
                header = json.loads(first.content[0].text.partition("\n")[0])
                assert header["session_id"] == session_id and header["status"] == "completed"

                follow = await session.call_tool("terminal", {"session_id": session_id,
                                                              "command": "cat state.txt; exit 3"})
                assert not follow.is_error, follow.content[0].text
                assert follow.structured_content["session_id"] == session_id
                assert follow.structured_content["output"] == "from-stdio\n"
                assert (follow.structured_content["exit_code"], follow.structured_content["status"]) == (3, "failed")

                listed = await session.call_tool("sessions_list", {})
                assert session_id in {s["id"] for s in listed.structured_content["sessions"]}
            finally:
                if session_id:
                    ended = await session.call_tool("session_terminate", {"session_id": session_id, "force": True})
                    assert not ended.is_error and ended.structured_content["status"] == "terminated"
    assert "serving MCP over stdio" in (tmp_path / "serve.stderr").read_text()
    with server.client() as http:
        assert http.get(f"/v1/sessions/{session_id}").json()["status"] == "terminated"
