"""The `chaser` CLI end to end: a real `chaser server`, real microVMs (TCG here).

Every command runs as a subprocess with `--json`, the way the reference page
shows it; the CLI finds the server through the config file the server wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.net import free_port
from tests.support.wait import WaitTimeout, wait_until

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
CHASER = [sys.executable, "-m", "chaser.cli.main"]
SERVER_START_TIMEOUT_S = 600  # may have to (re)build the template snapshot first



class ChaserServer:
    """`chaser server --port <free>` in its own process group, with a private config file and database."""

    def __init__(self) -> None:
        # Short path: the server keeps unix sockets under its directories.
        self.dir = Path(tempfile.mkdtemp(prefix="chcli-", dir="/tmp"))
        self.config = self.dir / "config.json"
        self.port = free_port()
        self.env = {
            **os.environ,
            "CHASER_CONFIG": str(self.config),
            "CHASER_DATABASE_URL": f"sqlite:///{self.dir / 'chaser.db'}",
        }
        for name in ("CHASER_API_URL", "CHASER_API_KEY"):
            self.env.pop(name, None)
        self.log = open(self.dir / "server.log", "wb")  # noqa: SIM115 - open while the server runs; closed in stop()
        self.proc = subprocess.Popen(
            [*CHASER, "server", "--port", str(self.port)],
            cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed by pgid at the end
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chaser server exited with {self.proc.returncode}:\n{self.log_tail()}")
            settings = self.settings()
            if not settings.get("api_key"):
                return False  # not written yet
            response = httpx.get(f"{self.api_url}/v1/sessions",
                                 headers={"Authorization": f"Bearer {settings['api_key']}"}, timeout=5)
            return response.status_code == 200

        try:
            wait_until(ready, SERVER_START_TIMEOUT_S, interval=0.5, ignore=(httpx.HTTPError,))
        except WaitTimeout:
            raise RuntimeError(f"chaser server not ready after {SERVER_START_TIMEOUT_S}s:\n{self.log_tail()}") from None

    def settings(self) -> dict:
        try:
            return json.loads(self.config.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def api_url(self) -> str:
        return (self.settings().get("api_url") or f"http://127.0.0.1:{self.port}").rstrip("/")

    def log_tail(self, size: int = 4000) -> str:
        self.log.flush()
        return (self.dir / "server.log").read_bytes()[-size:].decode(errors="replace")

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(wait)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def chaser_server():
    server = ChaserServer()
    yield server
    # Best effort: leave no VM behind even if a test failed half-way.
    subprocess.run([*CHASER, "sessions", "bulk-terminate", "--all", "--force", "--json"],
                   cwd=REPO, env=server.env, capture_output=True, timeout=120)
    server.stop()


@pytest.fixture
def chaser(chaser_server, tmp_path):
    """Run `chaser ARGS…` as a subprocess; returns CompletedProcess (bytes)."""

    def run(*args: str, input: bytes | None = None, check_exit: int | None = 0, timeout: float = 300):
        result = subprocess.run([*CHASER, *args], cwd=tmp_path, env=chaser_server.env, input=input,
                                capture_output=True, timeout=timeout)
        if check_exit is not None:
            assert result.returncode == check_exit, (
                f"chaser {' '.join(args)} -> {result.returncode}\nstdout: {result.stdout[-2000:]!r}\n"
                f"stderr: {result.stderr[-2000:]!r}\nserver log:\n{chaser_server.log_tail()}")
        return result

    def run_json(*args: str, **kwargs):
        # `--json` belongs to the chaser command, so it goes before a `-- CMD…`.
        at = args.index("--") if "--" in args else len(args)
        return json.loads(run(*args[:at], "--json", *args[at:], **kwargs).stdout)

    run.json = run_json
    return run


@pytest.fixture(scope="module")
def session_id(chaser_server):
    """One ephemeral session shared by the module, created the way the reference page shows."""
    out = subprocess.run([*CHASER, "sandbox", "--ephemeral", "--json"], cwd=REPO, env=chaser_server.env,
                         capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr.decode() + chaser_server.log_tail()
    session = json.loads(out.stdout)
    assert session["session_type"] == "sandbox" and session["endpoints"]["control"]
    assert chaser_server.settings()["current_session"] == session["id"]
    yield session["id"]
    subprocess.run([*CHASER, "sessions", "terminate", session["id"], "--force"], cwd=REPO,
                   env=chaser_server.env, capture_output=True, timeout=120)


@pytest.fixture
def current(session_id, chaser_server):
    """Make the shared session the current one again (other tests create sessions)."""
    from chaser.client import update_config

    update_config(chaser_server.config, current_session=session_id)
    return session_id


def test_exec_output_exit_codes_and_timeout(chaser, current):
    session_id = current
    result = chaser.json("exec", "--", "echo hello; pwd")
    assert result["status"] == "completed" and result["exit_code"] == 0
    assert result["session_id"] == session_id
    assert result["output"].splitlines() == ["hello", "/workspace"]

    plain = chaser("exec", "--cwd", "/tmp", "--env", "GREETING=hi there", "--", "pwd; echo $GREETING")
    assert plain.stdout == b"/tmp\nhi there\n"
    assert chaser("exec", "--", "printf", "%s|", "a b", "c").stdout == b"a b|c|"  # words are quoted
    assert chaser("exec", "--", "exit 3", check_exit=3).stdout == b""
    timed_out = chaser("exec", "--timeout", "1000", "--json", "--", "sleep 30", check_exit=124)
    assert json.loads(timed_out.stdout)["status"] == "timed_out"


def test_self_test_reports_the_runtime(chaser, current):
    report = chaser.json("sessions", "self-test")
    assert report["session_id"] == current
    runtime = report["runtime"]
    assert runtime["cwd"] == "/workspace"
    assert isinstance(runtime["path_entries"], list) and runtime["path_entries"]
    assert "tools" in runtime and "chaser" in runtime


def test_upload_download_round_trip(chaser, current, tmp_path):
    payload = os.urandom(256 * 1024) + b"\nend\n"
    (tmp_path / "app.js").write_bytes(payload)
    uploaded = chaser.json("upload", "./app.js", "/workspace/app.js")
    assert uploaded == {"path": "/workspace/app.js", "size": len(payload)}
    (tmp_path / "app.js").unlink()
    chaser("download", "/workspace/app.js", "./app.js")
    assert (tmp_path / "app.js").read_bytes() == payload
    assert chaser("download", "/workspace/app.js", "-").stdout == payload
    missing = chaser("download", "/workspace/missing", "./x", check_exit=1)
    assert missing.stderr.startswith(b"error: ") and not (tmp_path / "x").exists()


def test_background_command_stdin_logs_and_kill(chaser, current):
    started = chaser.json("exec", "--background", "--", "read line; echo got:$line; exit 4")
    assert started["status"] == "running" and started["background"] is True
    cid = started["command_id"]
    assert cid in [c["command_id"] for c in chaser.json("commands", "list")["commands"]]
    chaser("commands", "stdin", cid, "hello\n")
    followed = chaser("commands", "logs", cid, "-f", check_exit=4, timeout=120)
    assert followed.stdout == b"got:hello\n"
    command = chaser.json("commands", "get", cid)
    assert command["exit_code"] == 4 and "got:hello" in command["output"]
    assert chaser("commands", "logs", cid).stdout == b"got:hello\n"

    sleeper = chaser.json("exec", "--background", "--", "sleep 300")["command_id"]
    chaser("commands", "kill", sleeper, "--signal", "KILL")
    wait_until(lambda: chaser.json("commands", "get", sleeper)["status"] != "running", 60, interval=0.5,
               message="killed command still running")

    closer = chaser.json("exec", "--background", "--", "wc -c")["command_id"]
    chaser("commands", "stdin", closer, "12345", "--close")
    assert chaser("commands", "logs", closer, "-f", timeout=120).stdout.strip() == b"5"


def test_workspace_persists_across_sessions(chaser, chaser_server):
    name = f"dev-{uuid.uuid4().hex[:6]}"
    workspace = chaser.json("workspaces", "create", "--session-type", "sandbox", "--name", name)
    assert workspace["name"] == name
    assert chaser.json("workspaces", "get", name)["id"] == workspace["id"]
    assert name in [w["name"] for w in chaser.json("workspaces", "list")]

    first = chaser.json("sandbox", "--workspace", name)
    assert first["workspace_id"] == workspace["id"]
    chaser("exec", "--session", first["id"], "--", "echo kept > /workspace/note.txt")
    chaser("sessions", "terminate", first["id"])
    assert chaser_server.settings().get("current_session") is None

    second = chaser.json("sandbox", "--workspace", name)
    assert second["id"] != first["id"]
    assert chaser("exec", "--", "cat /workspace/note.txt").stdout == b"kept\n"
    chaser("workspaces", "delete", name, "--force")
    assert chaser("workspaces", "get", name, check_exit=1).stderr.startswith(b"error: ")


def test_sessions_list_get_and_bulk_terminate(chaser, session_id):
    extra = [chaser.json("sandbox", "--ephemeral")["id"] for _ in range(2)]
    listed = chaser.json("sessions", "list")
    assert set(extra) | {session_id} <= {s["id"] for s in listed["sessions"]}
    assert chaser.json("sessions", "get", extra[0])["id"] == extra[0]
    result = chaser.json("sessions", "bulk-terminate", "--ids", ",".join(extra))
    assert sorted(result["terminated"]) == sorted(extra) and result["failed"] == []
    remaining = {s["id"]: s["status"] for s in chaser.json("sessions", "list")["sessions"]}
    assert all(remaining.get(sid, "terminated") in ("terminated", "terminating") for sid in extra)
    assert chaser.json("sessions", "get", session_id)["status"] == "running"


def test_keys_create_list_revoke(chaser, chaser_server):
    created = chaser.json("keys", "create", "--name", "ci")
    assert created["key"] and created["name"] == "ci"
    assert created["id"] in [k["id"] for k in chaser.json("keys", "list")["keys"]]
    # The new key works on its own.
    env_check = subprocess.run([*CHASER, "keys", "list", "--json"], cwd=REPO, capture_output=True,
                               env={**chaser_server.env, "CHASER_API_KEY": created["key"]}, timeout=60)
    assert env_check.returncode == 0, env_check.stderr
    chaser("keys", "revoke", created["id"])
    refused = subprocess.run([*CHASER, "sessions", "list", "--json"], cwd=REPO, capture_output=True,
                             env={**chaser_server.env, "CHASER_API_KEY": created["key"]}, timeout=60)
    assert refused.returncode == 1 and refused.stderr.startswith(b"error: unauthorized: ")


def test_errors_are_one_line_with_code(chaser):
    result = chaser("sessions", "get", "does-not-exist", check_exit=1)
    assert result.stdout == b""
    line = result.stderr.decode().strip()
    assert line.startswith("error: ") and line.count(":") >= 2 and "\n" not in line
