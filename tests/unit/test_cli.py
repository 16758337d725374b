"""The `chaser` CLI against a tiny fake Chaser server (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import base64
import importlib
import importlib.machinery
import json
import re
import socket
import subprocess
import sys
import threading
import types
import uuid
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from typer.testing import CliRunner

from chaser.cli import main

REPO = Path(__file__).resolve().parents[2]


class FakeChaser:
    """Just enough of the API, in memory, to drive every CLI command."""

    def __init__(self) -> None:
        self.sessions: dict[str, dict] = {}
        self.commands: dict[tuple[str, str], dict] = {}
        self.files: dict[tuple[str, str], bytes] = {}
        self.keys: dict[str, dict] = {"k0": {"id": "k0", "key_prefix": "chs_ab", "name": "admin", "scopes": [],
                                             "full_access": True, "created_at": "2026-01-01T00:00:00Z",
                                             "last_used_at": None, "revoked": None}}
        self.workspaces: dict[str, dict] = {}
        self.requests: list[dict] = []
        self.routes = [
            ("POST", r"/v1/sessions", self.create_session),
            ("GET", r"/v1/sessions", lambda m, q, b: (200, {"sessions": list(self.sessions.values()), "total": len(self.sessions)})),
            ("POST", r"/v1/sessions/bulk-terminate", self.bulk_terminate),
            ("GET", r"/v1/sessions/(?P<sid>[^/]+)", lambda m, q, b: (200, self.session(m["sid"]))),
            ("DELETE", r"/v1/sessions/(?P<sid>[^/]+)", self.terminate),
            ("POST", r"/v1/sessions/(?P<sid>[^/]+)/self-test", self.self_test),
            ("POST", r"/v1/sessions/(?P<sid>[^/]+)/exec", self.exec),
            ("POST", r"/v1/exec", self.exec),
            ("GET", r"/v1/sessions/(?P<sid>[^/]+)/commands", lambda m, q, b: (200, {"commands": [
                c for (s, _), c in self.commands.items() if s == m["sid"]]})),
            ("GET", r"/v1/sessions/(?P<sid>[^/]+)/commands/(?P<cid>[^/]+)", lambda m, q, b: (200, self.command(m))),
            ("POST", r"/v1/sessions/(?P<sid>[^/]+)/commands/(?P<cid>[^/]+)/stdin", self.stdin),
            ("POST", r"/v1/sessions/(?P<sid>[^/]+)/commands/(?P<cid>[^/]+)/kill", self.kill),
            ("POST", r"/v1/sessions/(?P<sid>[^/]+)/upload", self.upload),
            ("GET", r"/v1/sessions/(?P<sid>[^/]+)/download", self.download),
            ("GET", r"/v1/keys", lambda m, q, b: (200, {"keys": list(self.keys.values())})),
            ("POST", r"/v1/keys", self.create_key),
            ("DELETE", r"/v1/keys/(?P<kid>[^/]+)", self.revoke_key),
            ("POST", r"/v1/workspaces", self.create_workspace),
            ("GET", r"/v1/workspaces", lambda m, q, b: (200, list(self.workspaces.values()))),
            ("GET", r"/v1/workspaces/(?P<w>[^/]+)", lambda m, q, b: (200, self.workspace(m["w"]))),
            ("DELETE", r"/v1/workspaces/(?P<w>[^/]+)", self.delete_workspace),
        ]

    # --- helpers ---
    class Error(Exception):
        def __init__(self, status: int, code: str, message: str) -> None:
            self.status, self.code, self.message = status, code, message

    def session(self, sid: str) -> dict:
        if sid not in self.sessions:
            raise self.Error(404, "session_not_found", f"session {sid} not found")
        return self.sessions[sid]

    def command(self, match) -> dict:
        self.session(match["sid"])
        key = (match["sid"], match["cid"])
        if key not in self.commands:
            raise self.Error(404, "command_not_found", f"command {match['cid']} not found")
        return self.commands[key]

    def workspace(self, ref: str) -> dict:
        for w in self.workspaces.values():
            if ref in (w["id"], w["name"]):
                return w
        raise self.Error(404, "workspace_not_found", f"workspace {ref} not found")

    # --- handlers: (match, query, body) -> (status, json | bytes | sse) ---
    def create_session(self, m, q, body):
        if body.get("workspace") and body.get("image"):
            raise self.Error(400, "invalid_request", "workspace and image are exclusive")
        workspace_id = self.workspace(body["workspace"])["id"] if body.get("workspace") else None
        sid = f"sess-{uuid.uuid4().hex[:8]}"
        self.sessions[sid] = {"id": sid, "created_at": "2026-01-01T00:00:00Z", "status": "running",
                              "session_type": "sandbox", "endpoints": {"control": f"/v1/sessions/{sid}"},
                              "workspace_id": workspace_id, "persistence": bool(workspace_id),
                              "image": body.get("image") or "chaser/base", "expires_at": "2026-01-01T06:00:00Z"}
        return 201, self.sessions[sid]

    def terminate(self, m, q, body):
        self.session(m["sid"])
        del self.sessions[m["sid"]]
        return 204, b""

    def bulk_terminate(self, m, q, body):
        ids = list(self.sessions) if body.get("all") else list(body.get("ids") or [])
        terminated, failed = [], []
        for sid in ids:
            if sid in self.sessions:
                del self.sessions[sid]
                terminated.append(sid)
            else:
                failed.append({"id": sid, "code": "session_not_found", "message": "not found"})
        return 200, {"terminated": terminated, "failed": failed}

    def self_test(self, m, q, body):
        self.session(m["sid"])
        return 200, {"kind": "session_self_test", "status": "ok", "session_id": m["sid"], "workspace_id": None,
                     "runtime": {"cwd": "/workspace", "home": "/root", "user": "root", "shell": "/bin/bash",
                                 "path": "/usr/bin:/bin", "path_entries": ["/usr/bin", "/bin"], "term": "xterm",
                                 "lang": "C.UTF-8", "chaser": {"session_id": m["sid"]},
                                 "tools": {"python3": "/usr/bin/python3"}, "tool_versions": {"python3": "3.11.2"}}}

    def exec(self, m, q, body):
        sid = m["sid"] if "sid" in m.groupdict() else next(iter(self.sessions), "sess-auto")
        if "sid" in m.groupdict():
            self.session(sid)
        command = body["command"]
        cid = f"cmd-{len(self.commands) + 1}"
        result = {"kind": "exec", "session_id": sid, "workspace_id": None, "command": command,
                  "background": bool(body.get("background")), "command_id": cid, "pid": 42,
                  "output_truncated": False}
        if body.get("background"):
            result.update(status="running", exit_code=None, output="")
            record = {"command_id": cid, "status": "running", "exit_code": None, "pid": 42, "command": command,
                      "started_at_epoch": 1, "finished_at_epoch": None, "output_bytes": 6, "output": "partial",
                      "output_truncated": False, "stdin": [], "signals": []}
            self.commands[(sid, cid)] = record
            return 200, result
        if command.startswith("sleep"):
            result.update(status="timed_out", exit_code=None, output="tick\n")
        elif command.startswith("exit "):
            result.update(status="completed", exit_code=int(command.split()[1]), output="")
        else:
            result.update(status="completed", exit_code=0, output=f"ran: {command}\n")
        return 200, result

    def stdin(self, m, q, body):
        record = self.command(m)
        data = base64.b64decode(body["input"]) if body.get("encoding") == "base64" else body["input"].encode()
        record["stdin"].append({"data": data.decode("latin-1"), "close": bool(body.get("close"))})
        return 200, {"ok": True}

    def kill(self, m, q, body):
        record = self.command(m)
        record["signals"].append(body.get("signal"))
        return 200, {"ok": True, "signal": body.get("signal")}

    def upload(self, m, q, body):
        self.session(m["sid"])
        fields = body  # parsed multipart
        data = fields["file"]
        if len(data) > 16 * 1024 * 1024:
            raise self.Error(413, "payload_too_large", "16 MB max")
        path = fields["path"].decode()
        self.files[(m["sid"], path)] = data
        return 200, {"path": path, "size": len(data)}

    def download(self, m, q, body):
        self.session(m["sid"])
        key = (m["sid"], q["path"][0])
        if key not in self.files:
            raise self.Error(404, "file_not_found", f"{q['path'][0]}: no such file")
        return 200, self.files[key]

    def create_key(self, m, q, body):
        kid = f"k{len(self.keys)}"
        self.keys[kid] = {"id": kid, "key_prefix": "chs_new", "name": body.get("name"), "scopes": body.get("scopes") or [],
                          "full_access": not body.get("scopes"), "created_at": "now", "last_used_at": None, "revoked": None}
        return 201, {**{k: v for k, v in self.keys[kid].items() if k in ("id", "key_prefix", "name", "scopes", "full_access")},
                     "key": "chs_new_secret"}

    def revoke_key(self, m, q, body):
        if m["kid"] not in self.keys:
            raise self.Error(404, "key_not_found", "no such key")
        self.keys[m["kid"]]["revoked"] = "now"
        return 204, b""

    def create_workspace(self, m, q, body):
        wid = f"ws-{len(self.workspaces) + 1}"
        self.workspaces[wid] = {"id": wid, "name": body.get("name"), "image": body.get("image") or "chaser/base",
                                "session_type": body.get("session_type"), "status": "ready",
                                "created_at": "now", "active_session_id": None}
        return 201, self.workspaces[wid]

    def delete_workspace(self, m, q, body):
        workspace = self.workspace(m["w"])
        del self.workspaces[workspace["id"]]
        return 204, b""

    # --- HTTP plumbing ---
    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        query = parse_qs(parts.query)
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        content_type = handler.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
            body = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True) for p in message.iter_parts()}
        else:
            body = json.loads(raw) if raw else {}
        self.requests.append({"method": handler.command, "path": parts.path, "query": query,
                              "body": body if not content_type.startswith("multipart") else None,
                              "auth": handler.headers.get("authorization")})
        if parts.path.endswith("/stream"):
            return self.stream(handler, parts.path, query)
        try:
            if handler.headers.get("authorization") != "Bearer test-key":
                raise self.Error(401, "unauthorized", "missing or invalid API key")
            for method, pattern, action in self.routes:
                match = re.fullmatch(pattern, parts.path)
                if method == handler.command and match:
                    status, payload = action(match, query, body)
                    break
            else:
                raise self.Error(404, "not_found", f"no route {handler.command} {parts.path}")
        except self.Error as exc:
            status, payload = exc.status, {"code": exc.code, "message": exc.message}
        if isinstance(payload, bytes):
            data, ctype = payload, "application/octet-stream"
        else:
            data, ctype = json.dumps(payload).encode(), "application/json"
        handler.send_response(status)
        handler.send_header("x-request-id", "req-test")
        if status != 204:
            handler.send_header("content-type", ctype)
            handler.send_header("content-length", str(len(data)))
        handler.end_headers()
        if status != 204:
            handler.wfile.write(data)

    def stream(self, handler, path, query) -> None:
        start = int(query.get("from", ["0"])[0])
        events = [("output", {"offset": 0, "data": "line one\n", "encoding": "utf-8"}),
                  ("output", {"offset": 9, "data": base64.b64encode(b"line \xe2\x9c\x93\n").decode(), "encoding": "base64"}),
                  ("exit", {"status": "completed", "exit_code": 7})]
        events = [e for e in events if e[0] == "exit" or e[1]["offset"] >= start]
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.end_headers()
        handler.wfile.write(b": hello\n\n")
        for name, data in events:
            handler.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            handler.wfile.flush()
        handler.close_connection = True


@pytest.fixture
def fake():
    state = FakeChaser()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        do_GET = do_POST = do_DELETE = do_PUT = lambda self: state.handle(self)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def config_file(tmp_path):
    return tmp_path / "chaser" / "config.json"


@pytest.fixture
def cli(fake, config_file, monkeypatch):
    """Run `chaser ARGS…` in-process against the fake server; the config file holds URL and key."""
    config_file.parent.mkdir()
    config_file.write_text(json.dumps({"api_url": fake.url, "api_key": "test-key"}))
    monkeypatch.setenv("CHASER_CONFIG", str(config_file))
    monkeypatch.delenv("CHASER_API_URL", raising=False)
    monkeypatch.delenv("CHASER_API_KEY", raising=False)
    runner = CliRunner()

    def run(*args: str, input: bytes | str | None = None, env: dict | None = None):
        return runner.invoke(main.app, list(args), input=input, env=env)

    return run


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
    for name in ("sandbox", "exec", "upload", "download", "sessions", "commands", "workspaces", "keys", "guest"):
        assert name in result.stdout


def test_server_command_registered_once_module_exists(monkeypatch):
    fake_module = types.ModuleType("chaser.cli.commands.server")
    fake_module.__spec__ = importlib.machinery.ModuleSpec("chaser.cli.commands.server", None)

    def server_command(port: int = 8080) -> None:
        """Run the server."""
        print(f"serving on {port}")

    fake_module.server_command = server_command
    import chaser.cli.commands as commands_package

    monkeypatch.setitem(sys.modules, "chaser.cli.commands.server", fake_module)
    monkeypatch.setattr(commands_package, "server", fake_module, raising=False)
    try:
        reloaded = importlib.reload(main)
        result = CliRunner().invoke(reloaded.app, ["server", "--port", "9"])
        assert result.exit_code == 0 and "serving on 9" in result.stdout
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
    assert fake.requests[-1]["body"] == {"command": "echo $X | wc -c", "cwd": "/tmp", "env": {"X": "1"}, "timeout_ms": 5000}
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
    assert len(json.loads(cli("keys", "list", "--json").stdout)["keys"]) == 3
    assert cli("keys", "revoke", "k1").stdout.strip() == "revoked k1"
    result = cli("keys", "revoke", "k99")
    assert result.exit_code == 1 and result.stderr == "error: key_not_found: no such key\n"


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
