"""The `chaser` CLI against a tiny fake Chaser server (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import base64
import importlib
import importlib.machinery
import json
import socket
import subprocess
import sys
import types
from pathlib import Path

from typer.testing import CliRunner

from chaser.cli import main

REPO = Path(__file__).resolve().parents[2]


def config(config_file) -> dict:
    return json.loads(config_file.read_text())


def start_session(cli) -> str:
    result = cli("sandbox", "--ephemeral", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["id"]


# --- help and wiring ---


def test_help_is_fast_and_imports_nothing_heavy():
    code = ("import sys; from chaser.cli import main; "
            "print([m for m in ('httpx', 'rich.console', 'chaser.client') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    result = CliRunner().invoke(main.app, ["--help"])
    assert result.exit_code == 0
    for name in ("sandbox", "exec", "upload", "download", "sessions", "commands", "workspaces", "keys", "audit", "guest"):
        assert name in result.stdout


def test_server_command_registered_once_module_exists(monkeypatch):
    fake_module = types.ModuleType("chaser.cli.commands.server")
    fake_module.__spec__ = importlib.machinery.ModuleSpec("chaser.cli.commands.server", None)

    def server_command(port: int = 8080) -> None:
        """Run the server."""
        print(f"serving on {port}")

    def node_command(listen: str = "0.0.0.0:8081") -> None:
        """Run a node."""
        print(f"node on {listen}")

    fake_module.server_command = server_command
    fake_module.node_command = node_command
    import chaser.cli.commands as commands_package

    monkeypatch.setitem(sys.modules, "chaser.cli.commands.server", fake_module)
    monkeypatch.setattr(commands_package, "server", fake_module, raising=False)
    try:
        reloaded = importlib.reload(main)
        result = CliRunner().invoke(reloaded.app, ["server", "--port", "9"])
        assert result.exit_code == 0 and "serving on 9" in result.stdout
        result = CliRunner().invoke(reloaded.app, ["node", "--listen", "127.0.0.2:9"])
        assert result.exit_code == 0 and "node on 127.0.0.2:9" in result.stdout
    finally:
        monkeypatch.undo()
        importlib.reload(main)


# --- sandbox and the current session ---


def test_sandbox_ephemeral_json_sets_current_session(cli, fake, config_file):
    result = cli("sandbox", "--ephemeral", "--json")
    assert result.exit_code == 0, result.output
    session = json.loads(result.stdout)
    assert session["status"] == "running" and session["session_type"] == "sandbox"
    assert fake.requests[-1]["body"] == {"session_type": "sandbox", "ephemeral": True}
    assert fake.requests[-1]["auth"] == "Bearer test-key"
    assert config(config_file) == {"api_url": fake.url, "api_key": "test-key", "current_session": session["id"]}


def test_sandbox_with_image_workspace_and_env(cli, fake):
    result = cli("sandbox", "--ephemeral", "--image", "ghcr.io/example/dev:latest", "--json")
    assert json.loads(result.stdout)["image"] == "ghcr.io/example/dev:latest"
    assert cli("workspaces", "create", "--session-type", "sandbox", "--name", "dev", "--json").exit_code == 0
    result = cli("sandbox", "--workspace", "dev", "--env", "A=1", "-e", "B=x=y")
    assert result.exit_code == 0, result.output
    assert "is now the current session" in result.stdout and "workspace ws-1" in result.stdout
    assert fake.requests[-1]["body"] == {"session_type": "sandbox", "workspace": "dev", "env": {"A": "1", "B": "x=y"}}
    result = cli("sandbox", "--workspace", "dev", "--image", "x")
    assert result.exit_code == 1
    assert result.stderr == "error: invalid_request: workspace and image are exclusive\n"


def test_bad_env_and_missing_session_are_usage_errors(cli):
    result = cli("sandbox", "--env", "NOEQUALS")
    assert result.exit_code == 1 and "error: invalid_argument:" in result.stderr
    result = cli("exec", "--", "true")
    assert result.exit_code == 1 and result.stderr.startswith("error: no_session:")


# --- exec ---


def test_exec_prints_output_and_joins_words(cli, fake):
    sid = start_session(cli)
    result = cli("exec", "--", "ls", "-la", "a b")
    assert result.exit_code == 0, result.output
    assert result.stdout == "ran: ls -la 'a b'\n"
    assert fake.requests[-1]["path"] == f"/v1/sessions/{sid}/exec"
    result = cli("exec", "--cwd", "/tmp", "--env", "X=1", "--timeout", "5000", "--", "echo $X | wc -c")
    assert result.stdout == "ran: echo $X | wc -c\n"
    assert fake.requests[-1]["body"] == {"command": "echo $X | wc -c", "cwd": "/tmp", "env": {"X": "1"},
                                         "timeout_ms": 5000}
    result = cli("exec", "uname", "-a")  # without `--`, words after the first still belong to CMD
    assert result.stdout == "ran: uname -a\n"


def test_exec_exit_codes_and_json(cli, fake):
    start_session(cli)
    assert cli("exec", "--", "exit 3").exit_code == 3
    result = cli("exec", "--timeout", "100", "--", "sleep 10")
    assert result.exit_code == 124 and result.stdout == "tick\n" and "timed_out" in result.stderr
    result = cli("exec", "--json", "--", "exit 5")
    assert result.exit_code == 5 and json.loads(result.stdout)["exit_code"] == 5


def test_exec_explicit_session_background_and_workspace(cli, fake):
    other = start_session(cli)
    start_session(cli)
    result = cli("exec", "--session", other, "--background", "--", "sleep 100")
    assert result.exit_code == 0
    assert result.stdout == "cmd-1\n" and "chaser commands logs cmd-1 -f" in result.stderr
    assert fake.requests[-1]["path"] == f"/v1/sessions/{other}/exec"
    assert fake.requests[-1]["body"] == {"command": "sleep 100", "background": True}
    result = cli("exec", "--workspace", "dev", "--", "npm test")
    assert result.exit_code == 0 and fake.requests[-1]["path"] == "/v1/exec"
    assert fake.requests[-1]["body"] == {"command": "npm test", "workspace": "dev"}


def test_exec_in_unknown_session_reports_api_error(cli):
    result = cli("exec", "--session", "nope", "--", "true")
    assert result.exit_code == 1
    assert result.stderr == "error: session_not_found: session nope not found\n"


# --- commands ---


def test_commands_list_get_logs_stdin_kill(cli, fake):
    sid = start_session(cli)
    cid = cli("exec", "-b", "--", "cat").stdout.strip()
    result = cli("commands", "list")
    assert result.exit_code == 0 and cid in result.stdout and "running" in result.stdout
    assert json.loads(cli("commands", "list", "--json").stdout)["commands"][0]["command_id"] == cid
    assert json.loads(cli("commands", "get", cid, "--json").stdout)["status"] == "running"
    assert "status: running" in cli("commands", "get", cid).stdout
    assert cli("commands", "logs", cid).stdout == "partial"

    assert cli("commands", "stdin", cid, "hello\n").exit_code == 0
    assert cli("commands", "stdin", cid, base64.b64encode(b"\x00\x01").decode(), "--base64").exit_code == 0
    assert cli("commands", "stdin", cid, "-", "--close", input=b"piped").exit_code == 0
    assert cli("commands", "stdin", cid, "***", "--base64").exit_code == 1
    assert fake.commands[(sid, cid)]["stdin"] == [
        {"data": "hello\n", "close": False}, {"data": "\x00\x01", "close": False}, {"data": "piped", "close": True}]

    assert cli("commands", "kill", cid, "--signal", "KILL").exit_code == 0
    assert cli("commands", "kill", cid, "--signal", "9", "--json").exit_code == 0
    assert cli("commands", "kill", cid).exit_code == 0
    assert fake.commands[(sid, cid)]["signals"] == ["KILL", 9, None]
    result = cli("commands", "get", "missing")
    assert result.exit_code == 1 and result.stderr.startswith("error: command_not_found:")


def test_commands_logs_follow_streams_bytes_and_exits_with_code(cli, fake):
    start_session(cli)
    cid = cli("exec", "-b", "--", "job").stdout.strip()
    result = cli("commands", "logs", cid, "-f")
    assert result.exit_code == 7
    assert result.stdout_bytes == "line one\nline ✓\n".encode()
    result = cli("commands", "logs", cid, "-f", "--from", "9")
    assert result.stdout_bytes == "line ✓\n".encode()
    assert fake.requests[-1]["query"]["from"] == ["9"]
    lines = cli("commands", "logs", cid, "-f", "--json").stdout.splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["output", "output", "exit"]


# --- files ---


def test_upload_and_download(cli, fake, tmp_path):
    sid = start_session(cli)
    local = tmp_path / "app.js"
    local.write_bytes(b"console.log('hi')\n\x00\xff")
    result = cli("upload", str(local), "/workspace/app.js")
    assert result.exit_code == 0, result.output
    assert "uploaded 20 bytes to /workspace/app.js" in result.stdout
    assert fake.files[(sid, "/workspace/app.js")] == local.read_bytes()

    back = tmp_path / "back.js"
    result = cli("download", "/workspace/app.js", str(back))
    assert result.exit_code == 0 and back.read_bytes() == local.read_bytes()
    assert cli("download", "/workspace/app.js", "-").stdout_bytes == local.read_bytes()
    (tmp_path / "dir").mkdir()
    assert json.loads(cli("download", "/workspace/app.js", str(tmp_path / "dir"), "--json").stdout)["size"] == 20
    assert (tmp_path / "dir" / "app.js").exists()

    assert cli("upload", "-", "/workspace/in.txt", input=b"from stdin").exit_code == 0
    assert fake.files[(sid, "/workspace/in.txt")] == b"from stdin"
    result = cli("download", "/workspace/nope", str(tmp_path / "nope"))
    assert result.exit_code == 1 and result.stderr == "error: file_not_found: /workspace/nope: no such file\n"
    assert not (tmp_path / "nope").exists()
    result = cli("upload", str(tmp_path / "absent"), "/x")
    assert result.exit_code == 1 and "error: file_not_found:" in result.stderr


# --- sessions ---


def test_sessions_list_get_self_test_terminate(cli, fake, config_file):
    first = start_session(cli)
    second = start_session(cli)
    listing = json.loads(cli("sessions", "list", "--json").stdout)
    assert listing["total"] == 2 and {s["id"] for s in listing["sessions"]} == {first, second}
    human = cli("sessions", "list").stdout
    assert first in human and second in human and "running" in human

    assert json.loads(cli("sessions", "get", "--json").stdout)["id"] == second  # current by default
    assert f"id: {first}" in cli("sessions", "get", first).stdout

    report = json.loads(cli("sessions", "self-test", "--json").stdout)
    assert report["session_id"] == second and report["runtime"]["cwd"] == "/workspace"
    assert "python3: 3.11.2" in cli("sessions", "self-test").stdout

    result = cli("sessions", "terminate", first, "--force")
    assert result.exit_code == 0 and fake.requests[-1]["query"] == {"force": ["true"]}
    assert config(config_file)["current_session"] == second
    assert json.loads(cli("sessions", "terminate", "--json").stdout) == {"id": second, "status": "terminated"}
    assert "current_session" not in config(config_file)
    assert cli("sessions", "list").stdout.strip() == "no sessions"
    result = cli("sessions", "get", first)
    assert result.exit_code == 1 and result.stderr == f"error: session_not_found: session {first} not found\n"


def test_sessions_bulk_terminate(cli, fake):
    a, b, c = start_session(cli), start_session(cli), start_session(cli)
    assert cli("sessions", "bulk-terminate").exit_code == 1
    result = cli("sessions", "bulk-terminate", "--ids", f"{a},{b}", "--force", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == {"terminated": [a, b], "failed": []}
    assert fake.requests[-1]["body"] == {"ids": [a, b], "force": True}
    result = cli("sessions", "bulk-terminate", "--ids", a)
    assert result.exit_code == 1 and f"failed {a}: session_not_found" in result.stdout
    result = cli("sessions", "bulk-terminate", "--all")
    assert result.exit_code == 0 and f"terminated {c}" in result.stdout


# --- keys and workspaces ---


def test_keys(cli, fake):
    assert "chs_ab" in cli("keys", "list").stdout
    result = cli("keys", "create", "--name", "ci", "--scope", "sessions:write", "--scope", "exec")
    assert result.exit_code == 0 and result.stdout == "chs_new_secret\n" and "not shown again" in result.stderr
    assert fake.requests[-1]["body"] == {"name": "ci", "scopes": ["sessions:write", "exec"]}
    created = json.loads(cli("keys", "create", "--json").stdout)
    assert created["key"] == "chs_new_secret" and fake.requests[-1]["body"] == {}
    assert cli("keys", "create", "--e2b").exit_code == 0 and fake.requests[-1]["body"] == {"format": "e2b"}
    assert len(json.loads(cli("keys", "list", "--json").stdout)["keys"]) == 4
    assert cli("keys", "revoke", "k1").stdout.strip() == "revoked k1"
    result = cli("keys", "revoke", "k99")
    assert result.exit_code == 1 and result.stderr == "error: key_not_found: no such key\n"


def test_audit_list(cli, fake):
    result = cli("audit", "list", "--limit", "2")
    assert result.exit_code == 0 and fake.requests[-1]["query"] == {"limit": ["2"]}
    assert "aud_5" in result.stdout and "aud_4" in result.stdout and "aud_3" not in result.stdout
    assert "command.exec" in result.stdout and "echo 5" in result.stdout
    assert result.stderr == "more: chaser audit list --before aud_4\n"
    page = json.loads(cli("audit", "list", "--before", "aud_4", "--limit", "10", "--json").stdout)
    assert fake.requests[-1]["query"] == {"before": ["aud_4"], "limit": ["10"]}
    assert [event["id"] for event in page["events"]] == ["aud_3", "aud_2", "aud_1"]
    last = cli("audit", "list", "--before", "aud_4", "--limit", "10")
    assert last.exit_code == 0 and last.stderr == ""  # a page shorter than --limit is the last one
    assert "127.0.0.1" in cli("audit", "list", "--wide").stdout
    assert cli("audit", "list", "--limit", "0").exit_code == 2


def test_workspaces(cli, fake):
    created = json.loads(cli("workspaces", "create", "--session-type", "sandbox", "--name", "dev", "--json").stdout)
    assert created["name"] == "dev" and fake.requests[-1]["body"] == {"name": "dev", "session_type": "sandbox"}
    assert "created" in cli("workspaces", "create", "--image", "img:1").stdout
    assert [w["id"] for w in json.loads(cli("workspaces", "list", "--json").stdout)] == ["ws-1", "ws-2"]
    assert "dev" in cli("workspaces", "list").stdout
    assert json.loads(cli("workspaces", "get", "dev", "--json").stdout)["id"] == "ws-1"
    assert cli("workspaces", "delete", "dev", "--force").exit_code == 0
    assert fake.requests[-1]["query"] == {"force": ["true"]}
    result = cli("workspaces", "get", "dev")
    assert result.exit_code == 1 and result.stderr == "error: workspace_not_found: workspace dev not found\n"


# --- global options and failures ---


def test_env_and_flags_override_the_config_file(cli, fake):
    result = cli("keys", "list", "--json", env={"CHASER_API_KEY": "wrong"})
    assert result.exit_code == 1 and result.stderr == "error: unauthorized: missing or invalid API key\n"
    assert cli("--api-key", "test-key", "keys", "list", env={"CHASER_API_KEY": "wrong"}).exit_code == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    result = cli("sessions", "list", env={"CHASER_API_URL": closed})
    assert result.exit_code == 1 and result.stderr.startswith(f"error: connection_error: cannot reach {closed}")


def test_sessions_pause_resume_fork(cli, fake):
    sid = start_session(cli)
    assert cli("sessions", "pause").stdout.strip() == f"paused {sid}"  # the current session by default
    assert fake.sessions[sid]["status"] == "paused" and fake.requests[-1]["path"] == f"/v1/sessions/{sid}/pause"
    assert json.loads(cli("sessions", "resume", sid, "--json").stdout)["status"] == "running"
    forked = cli("sessions", "fork", "--count", "2").stdout.split()
    assert forked == [f"{sid}-fork0", f"{sid}-fork1"]
    assert fake.requests[-1]["body"] == {"count": 2}
    result = json.loads(cli("sessions", "fork", sid, "--workspace", "a", "--json").stdout)
    assert result["source_id"] == sid and fake.requests[-1]["body"] == {"count": 1, "workspace_names": ["a"]}
    assert cli("sessions", "fork", "--count", "0").exit_code == 2  # refused before any request
