"""A tiny in-memory Chaser API on real HTTP (127.0.0.1): enough to drive every CLI command.
Fixtures over it (`fake`, `config_file`, `cli`) are in tests/unit/conftest.py."""

from __future__ import annotations

import base64
import json
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


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
        self.audit_events = [  # newest first, as the server answers
            {"id": f"aud_{n}", "actor_type": "api_key", "actor_id": "k0", "account_id": "personal",
             "client_address": "127.0.0.1", "action": "command.exec", "resource_type": "session",
             "resource_id": "sess-1", "status": "success", "summary": f"echo {n}",
             "metadata": {"command": f"echo {n}"}, "created_at": "2026-01-01T00:00:00Z"} for n in range(5, 0, -1)]
        self.requests: list[dict] = []
        self.routes = [
            ("POST", r"/v1/sessions", self.create_session),
            ("GET", r"/v1/sessions",
             lambda m, q, b: (200, {"sessions": list(self.sessions.values()), "total": len(self.sessions)})),
            ("POST", r"/v1/sessions/bulk-terminate", self.bulk_terminate),
            ("GET", r"/v1/sessions/(?P<sid>[^/]+)", lambda m, q, b: (200, self.session(m["sid"]))),
            ("DELETE", r"/v1/sessions/(?P<sid>[^/]+)", self.terminate),
            ("POST", r"/v1/sessions/(?P<sid>[^/]+)/self-test", self.self_test),
            ("POST", r"/v1/sessions/(?P<sid>[^/]+)/pause", lambda m, q, b: self.set_status(m["sid"], "paused")),
            ("POST", r"/v1/sessions/(?P<sid>[^/]+)/resume", lambda m, q, b: self.set_status(m["sid"], "running")),
            ("POST", r"/v1/sessions/(?P<sid>[^/]+)/fork", self.fork),
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
            ("GET", r"/v1/audit/events", self.list_audit_events),
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

    def list_audit_events(self, m, q, body):
        before = int(q["before"][0].removeprefix("aud_")) if "before" in q else None
        found = [e for e in self.audit_events if before is None or int(e["id"].removeprefix("aud_")) < before]
        return 200, {"events": found[:int(q.get("limit", ["100"])[0])]}

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

    def set_status(self, sid: str, status: str):
        self.session(sid)["status"] = status
        return 200, self.sessions[sid]

    def fork(self, m, q, body):
        source = self.session(m["sid"])
        forks = []
        for index in range(body.get("count", 1)):
            sid = f"{m['sid']}-fork{index}"
            self.sessions[sid] = {**source, "id": sid, "ephemeral": not body.get("workspace_names")}
            forks.append(self.sessions[sid])
        return 201, {"source_id": m["sid"], "sessions": forks}

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
        self.keys[kid] = {"id": kid, "key_prefix": "chs_new", "name": body.get("name"),
                          "scopes": body.get("scopes") or [], "full_access": not body.get("scopes"),
                          "created_at": "now", "last_used_at": None, "revoked": None}
        shown = ("id", "key_prefix", "name", "scopes", "full_access")
        return 201, {**{k: v for k, v in self.keys[kid].items() if k in shown},
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
            body = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True)
                    for p in message.iter_parts()}
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
                  ("output", {"offset": 9, "data": base64.b64encode(b"line \xe2\x9c\x93\n").decode(),
                              "encoding": "base64"}),
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


@contextmanager
def serving(state: FakeChaser) -> Iterator[FakeChaser]:
    """`state` answering on 127.0.0.1:<free port> (its `url`) until the block ends."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        do_GET = do_POST = do_DELETE = do_PUT = lambda self: state.handle(self)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
