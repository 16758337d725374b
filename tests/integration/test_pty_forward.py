"""PTY and port forwarding end to end: a real `chaser server`, one real microVM
(TCG here) for the whole module, real sockets; the CLI as subprocesses and in tmux.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import ServerProcess, qemu_pids_under
from tests.support.net import free_port
from tests.support.servers import SANDBOX_SERVERS
from tests.support.wait import WaitTimeout, wait_until

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
CHASER = [sys.executable, "-m", "chaser.cli.main"]

# Ports inside the sandbox.
HTTP_ANY, HTTP_LOCAL, ECHO, WS, TCP_ECHO, CLOSED = 8000, 8001, 8002, 8003, 8004, 8009



@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # Short path: the server keeps unix sockets under its home.
    base = Path(tmp_path_factory.mktemp("ptyfwd"))
    srv = ServerProcess(home=base / "home", config_file=base / "config.json",
                        extra_env={"CHASER_BASE_DOMAIN": "localhost"}).start(timeout=600)
    yield srv
    srv.stop()
    wait_until(lambda: not qemu_pids_under(srv.home), 30, interval=0.2, message="QEMU left behind")


@pytest.fixture(scope="module")
def api(server):
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def session(server, api):
    response = api.post("/v1/sessions", json={"ephemeral": True})
    assert response.status_code == 201, response.text
    sid = response.json()["id"]
    run(api, sid, "mkdir -p /workspace/www && head -c 5242880 /dev/urandom > /workspace/www/big.bin "
                  "&& echo hello > /workspace/www/index.txt")
    api.post(f"/v1/sessions/{sid}/upload", files={"file": ("servers.py", SANDBOX_SERVERS.encode())},
             data={"path": "/workspace/servers.py"}).raise_for_status()
    for command in (
        f"cd /workspace/www && exec python3 -m http.server {HTTP_ANY} --bind 0.0.0.0",
        f"cd /workspace/www && exec python3 -m http.server {HTTP_LOCAL} --bind 127.0.0.1",
        f"exec python3 /workspace/servers.py http-echo {ECHO}",
        f"exec python3 /workspace/servers.py ws-echo {WS}",
        f"exec python3 /workspace/servers.py line-echo {TCP_ECHO}",
    ):
        r = api.post(f"/v1/sessions/{sid}/exec", json={"command": command, "background": True})
        assert r.status_code == 200, r.text
    wait = " && ".join(f"until python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {p}), 1)' "
                       f"2>/dev/null; do sleep 0.2; done" for p in (HTTP_ANY, HTTP_LOCAL, ECHO, WS, TCP_ECHO))
    run(api, sid, wait, timeout_ms=120_000)
    yield sid
    api.delete(f"/v1/sessions/{sid}", params={"force": "true"})


def run(api, sid: str, command: str, timeout_ms: int = 60_000) -> str:
    r = api.post(f"/v1/sessions/{sid}/exec", json={"command": command, "timeout_ms": timeout_ms})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body.get("exit_code") == 0, body
    return body.get("output", "")


def ws_url(server) -> str:
    return server.url.replace("http://", "ws://")


def ws_connect(url, headers=None):
    from websockets.sync.client import connect

    return connect(url, additional_headers=headers or {}, max_size=None, open_timeout=60)


def auth(server) -> dict:
    return {"Authorization": f"Bearer {server.api_key}"}


def read_until(ws, needle: bytes, timeout: float = 30.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{needle!r} not seen in {seen[-500:]!r}"
        msg = ws.recv(timeout=remaining)
        if isinstance(msg, bytes):
            seen += msg
    return seen


def read_exit(ws, timeout: float = 30.0) -> tuple[bytes, int]:
    out = b""
    deadline = time.monotonic() + timeout
    while True:
        msg = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(msg, bytes):
            out += msg
        else:
            control = json.loads(msg)
            if control.get("type") == "exit":
                return out, control["exit_code"]


def wait_no_ptys(api, sid: str, timeout: float = 20.0) -> None:
    wait_until(lambda: api.get(f"/v1/sessions/{sid}/ptys").json()["ptys"] == [], timeout, interval=0.2,
               message="PTYs left behind")


def sandbox_runs(api, sid: str, argv: str) -> bool:
    """A process whose command line is `argv` (words joined by spaces) runs in the sandbox."""
    listing = run(api, sid, "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done")
    return f"{argv} " in listing.splitlines()


def pty_sizes(api, sid: str) -> list[tuple[int, int]]:
    return [(p["rows"], p["cols"]) for p in api.get(f"/v1/sessions/{sid}/ptys").json()["ptys"]]


# --- PTY over the WebSocket ------------------------------------------------------------------
def test_shell_echo_resize_exit(server, api, session):
    with ws_connect(f"{ws_url(server)}/v1/sessions/{session}/pty?rows=24&cols=80", auth(server)) as ws:
        ws.send(b"echo hi-$((1+1))\n")
        read_until(ws, b"hi-2")
        ws.send(b"pwd; echo $TERM\n")
        read_until(ws, b"/workspace\r\nxterm-256color")
        ws.send(b"stty size\n")
        read_until(ws, b"24 80")
        ws.send(json.dumps({"type": "resize", "rows": 50, "cols": 132}))
        ws.send(b"stty size\n")
        read_until(ws, b"50 132")
        r = api.post(f"/v1/sessions/{session}/resize", json={"rows": 40, "cols": 100})
        assert r.status_code == 200 and r.json()["resized"]
        ws.send(b"stty size\n")
        read_until(ws, b"40 100")
        ws.send(b"sleep 31\n")
        wait_until(lambda: sandbox_runs(api, session, "sleep 31"), 30, interval=0.2,
                   message="the shell never started sleep 31")  # the foreground job the INT is for
        ws.send(json.dumps({"type": "signal", "signal": "INT"}))
        ws.send(b"echo after-$((6*7))\n")
        read_until(ws, b"after-42", timeout=15)  # well before the sleep would end
        ws.send(b"exit 3\n")
        _, code = read_exit(ws)
        assert code == 3
    for rows, cols in ((0, 80), (24, 1001)):
        r = api.post(f"/v1/sessions/{session}/resize", json={"rows": rows, "cols": cols})
        assert r.status_code == 400 and r.json()["code"] == "invalid_request"
    wait_no_ptys(api, session)


def test_agent_mode(server, session):
    with ws_connect(f"{ws_url(server)}/v1/sessions/{session}/pty?mode=agent", auth(server)) as ws:
        ws.send(b"echo $TERM $NO_COLOR $PAGER\n")
        seen = read_until(ws, b"dumb 1 cat")
        ws.send(b"exit\n")
        rest, code = read_exit(ws)
    assert b"\x1b" not in seen + rest, "agent mode must be free of escape sequences"
    assert b"$ " in seen and code == 0


def test_exec_mode(server, session):
    with ws_connect(f"{ws_url(server)}/v1/sessions/{session}/pty?mode=exec&token={server.api_key}") as ws:
        ws.send(json.dumps({"type": "exec", "command": "echo out-$((2+3)); pwd; exit 4"}))
        out, code = read_exit(ws)
    assert out == b"out-5\n/workspace\n" and code == 4


def test_pty_refusals(server, session):
    from websockets.exceptions import InvalidStatus

    api_ws = ws_url(server)
    cases = ((f"/v1/sessions/ses_000000000000000000000000/pty?token={server.api_key}", 404, "session_not_found"),
             (f"/v1/sessions/{session}/pty", 401, "unauthorized"),
             (f"/v1/sessions/{session}/pty?mode=bogus&token={server.api_key}", 400, "invalid_request"))
    for path, status, code in cases:
        with pytest.raises(InvalidStatus) as info:
            ws_connect(api_ws + path)
        assert info.value.response.status_code == status
        assert json.loads(info.value.response.body)["code"] == code


def test_several_ptys_and_no_leftovers(server, api, session):
    stack = contextlib.ExitStack()
    sockets = [stack.enter_context(ws_connect(f"{ws_url(server)}/v1/sessions/{session}/pty", auth(server)))
               for _ in range(3)]
    for i, ws in enumerate(sockets):
        ws.send(f"echo tty-{i}-$((i=1))\n".encode())
    for i, ws in enumerate(sockets):
        read_until(ws, f"tty-{i}-1".encode())
    ptys = api.get(f"/v1/sessions/{session}/ptys").json()["ptys"]
    assert len(ptys) == 3
    pids = [p["pid"] for p in ptys]
    stack.close()  # dropped without an exit
    wait_no_ptys(api, session)
    alive = run(api, session, "for p in " + " ".join(map(str, pids)) + "; do [ -d /proc/$p ] && echo $p; done; true")
    assert alive.strip() == ""


def test_slow_reader_is_bounded(server, api, session):
    """A client that stops reading stalls the shell instead of the server's memory."""
    def server_rss() -> int:
        return int(Path(f"/proc/{server.process.pid}/status").read_text().split("VmRSS:")[1].split()[0])

    with ws_connect(f"{ws_url(server)}/v1/sessions/{session}/pty", auth(server)) as ws:
        ws.send(b"echo go; head -c 400000000 /dev/zero | od -v\n")
        before = server_rss()
        time.sleep(8)  # not reading
        grown = server_rss() - before
        assert grown < 64 * 1024, f"server RSS grew by {grown} KiB while the client did not read"
    wait_no_ptys(api, session)


# --- chaser shell -----------------------------------------------------------------------------
def cli_env(server, sid: str, tmp_path: Path) -> dict:
    config = tmp_path / "cli.json"
    config.write_text(json.dumps({"api_url": server.url, "api_key": server.api_key, "current_session": sid}))
    env = {**os.environ, "CHASER_CONFIG": str(config)}
    for name in ("CHASER_API_URL", "CHASER_API_KEY"):
        env.pop(name, None)
    return env


def test_shell_dash_c_exit_codes(server, session, tmp_path):
    env = cli_env(server, session, tmp_path)
    ok = subprocess.run([*CHASER, "shell", "-c", "echo one && pwd"], env=env, cwd=REPO, capture_output=True,
                        timeout=120, stdin=subprocess.DEVNULL)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == b"one\n/workspace\n"
    bad = subprocess.run([*CHASER, "shell", session, "-c", "echo err >&2; exit 42"], env=env, cwd=REPO,
                         capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert bad.returncode == 42 and b"err" in bad.stdout
    piped = subprocess.run([*CHASER, "shell", "-c", "tr a-z A-Z"], env=env, cwd=REPO, capture_output=True,
                           timeout=120, input=b"piped text\n")
    assert piped.returncode == 0 and piped.stdout == b"PIPED TEXT\n", piped
    missing = subprocess.run([*CHASER, "shell", "ses_000000000000000000000000", "-c", "true"], env=env, cwd=REPO,
                             capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert missing.returncode == 1 and b"session_not_found" in missing.stderr


def test_shell_piped_stdin_interactive(server, session, tmp_path):
    env = cli_env(server, session, tmp_path)
    done = subprocess.run([*CHASER, "shell", "--mode", "agent"], env=env, cwd=REPO, capture_output=True,
                          timeout=120, input=b"echo piped-$((5*5))\nexit 6\n")
    assert done.returncode == 6 and b"piped-25" in done.stdout, done


def test_shell_in_tmux(server, api, session, tmp_path):
    env = cli_env(server, session, tmp_path)
    name = f"chaser-{uuid.uuid4().hex[:8]}"
    code_file = tmp_path / "code"
    script = tmp_path / "run.sh"
    script.write_text(f"cd {REPO}; {' '.join(CHASER)} shell; echo $? > {code_file}; sleep 60\n")
    tmux_env = [arg for k in ("CHASER_CONFIG", "PATH") for arg in ("-e", f"{k}={env[k]}")]
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "120", "-y", "40", *tmux_env,
                    f"bash {script}"], check=True, env=env)
    try:
        def pane() -> str:
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", name], capture_output=True, text=True).stdout

        def wait_for(text: str, timeout: float = 60) -> str:
            def shown() -> str | None:
                content = pane()
                return content if text in content else None

            try:
                return wait_until(shown, timeout, interval=0.2)
            except WaitTimeout:
                raise AssertionError(f"{text!r} not on screen:\n{pane()}") from None

        wait_for("#")  # the root prompt
        subprocess.run(["tmux", "send-keys", "-t", name, "echo hi-$((1+1))", "Enter"], check=True)
        wait_for("hi-2")
        subprocess.run(["tmux", "send-keys", "-t", name, "stty size", "Enter"], check=True)
        wait_for("40 120")
        subprocess.run(["tmux", "resize-window", "-t", name, "-x", "100", "-y", "30"], check=False)
        wait_until(lambda: (30, 100) in pty_sizes(api, session), 30, interval=0.2,
                   message="the new window size never reached the sandbox's terminal")  # SIGWINCH -> resize
        subprocess.run(["tmux", "send-keys", "-t", name, "clear; stty size", "Enter"], check=True)
        wait_for("30 100")
        subprocess.run(["tmux", "send-keys", "-t", name, "sleep 101", "Enter"], check=True)
        wait_until(lambda: sandbox_runs(api, session, "sleep 101"), 30, interval=0.2,
                   message="the shell never started sleep 101")
        subprocess.run(["tmux", "send-keys", "-t", name, "C-c"], check=True)  # to the sandbox, not the CLI
        subprocess.run(["tmux", "send-keys", "-t", name, "echo still-$((3*3))", "Enter"], check=True)
        wait_for("still-9")
        subprocess.run(["tmux", "send-keys", "-t", name, "exit 3", "Enter"], check=True)
        try:
            wait_until(code_file.exists, 60, interval=0.2)
        except WaitTimeout:
            raise AssertionError(f"chaser shell did not exit:\n{pane()}") from None
        assert code_file.read_text().strip() == "3"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
    wait_no_ptys(api, session)


# --- the gateway --------------------------------------------------------------------------------
def test_forward_http_server_on_any_and_loopback(server, api, session):
    for port in (HTTP_ANY, HTTP_LOCAL):
        r = api.get(f"/s/{session}/forward/{port}/index.txt")
        assert r.status_code == 200 and r.text == "hello\n", (port, r.text)
        listing = api.get(f"/s/{session}/forward/{port}/")
        assert listing.status_code == 200 and "big.bin" in listing.text


def test_forward_streams_big_download_and_upload(server, api, session):
    expected = run(api, session, "sha256sum /workspace/www/big.bin").split()[0]
    digest = hashlib.sha256()
    size = 0
    with api.stream("GET", f"/s/{session}/forward/{HTTP_LOCAL}/big.bin") as r:
        assert r.status_code == 200
        for chunk in r.iter_bytes():
            digest.update(chunk)
            size += len(chunk)
    assert size == 5 * 1024 * 1024 and digest.hexdigest() == expected
    body = os.urandom(5 * 1024 * 1024)
    r = api.post(f"/s/{session}/forward/{ECHO}/echo", content=body, headers={"Content-Type": "application/x-test"})
    assert r.status_code == 200 and hashlib.sha256(r.content).digest() == hashlib.sha256(body).digest()

    def chunks():
        for i in range(8):
            yield bytes([i]) * 10_000

    r = api.put(f"/s/{session}/forward/{ECHO}/echo", content=chunks())
    assert r.content == b"".join(bytes([i]) * 10_000 for i in range(8))
    r = api.get(f"/s/{session}/forward/{ECHO}/chunked")
    assert r.headers.get("transfer-encoding") == "chunked" and r.text == "one\ntwo\nthree\n"


def test_forward_headers_upstream(server, api, session):
    r = api.get(f"/s/{session}/forward/{ECHO}/headers", headers={"Cookie": "app=1; chaser_token=x", "X-Custom": "v"})
    seen = r.json()
    assert "authorization" not in seen and seen["cookie"] == "app=1" and seen["x-custom"] == "v"
    assert seen["x-forwarded-prefix"] == f"/s/{session}/forward/{ECHO}"


def test_forward_errors(server, api, session):
    r = api.get(f"/s/{session}/forward/{CLOSED}/")
    assert r.status_code == 502 and r.json()["code"] == "port_not_listening"
    for port in (0, 70000):
        r = api.get(f"/s/{session}/forward/{port}/")
        assert r.status_code == 400 and r.json()["code"] == "invalid_request"
    assert api.get("/s/ses_000000000000000000000000/forward/8000/").status_code == 404
    assert httpx.get(f"{server.url}/s/{session}/forward/{HTTP_ANY}/").status_code == 401


def test_forward_cookie_login(server, session):
    """Browsers log in on the session's own host-style origin only; path style (the API's
    origin) refuses the link and sandboxes what it serves."""
    path = f"/s/{session}/forward/{HTTP_ANY}/index.txt"
    with httpx.Client(base_url=server.url, timeout=60) as browser:
        r = browser.get(f"{path}?token={server.api_key}", follow_redirects=False)
        assert r.status_code == 400 and "host-style" in r.json()["message"] and "set-cookie" not in r.headers
    host = {"Host": f"{session}.localhost:{server.port}"}
    r = httpx.get(f"{server.url}/forward/{HTTP_ANY}/index.txt?token={server.api_key}", headers=host,
                  follow_redirects=False, timeout=60)
    assert r.status_code == 302 and r.headers["location"] == f"/forward/{HTTP_ANY}/index.txt"
    cookie = r.headers["set-cookie"]
    attributes = [a.strip().lower() for a in cookie.split(";")]
    assert cookie.startswith(f"chaser_token=v1.{session}.") and server.api_key not in cookie
    assert {"httponly", "path=/", "samesite=lax"} <= set(attributes)
    assert not any(a.startswith("domain") for a in attributes)
    token = cookie.split(";")[0].partition("=")[2]
    r = httpx.get(f"{server.url}/forward/{HTTP_ANY}/index.txt", headers={**host, "Cookie": f"chaser_token={token}"},
                  timeout=60)
    assert r.status_code == 200 and r.text == "hello\n"
    r = httpx.get(f"{server.url}{path}", headers={"Cookie": f"chaser_token={token}"}, timeout=60)
    assert r.status_code == 401  # never on path style


def test_forward_path_style_is_sandboxed(api, session):
    r = api.get(f"/s/{session}/forward/{HTTP_ANY}/index.txt")
    assert r.status_code == 200 and r.text == "hello\n"
    assert r.headers["content-security-policy"].startswith("sandbox ")
    assert "allow-same-origin" not in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"


def test_forward_public_port(server, api, session):
    path = f"{server.url}/s/{session}/forward/{HTTP_LOCAL}/index.txt"
    assert httpx.get(path).status_code == 401
    r = api.post(f"/v1/sessions/{session}/ports/{HTTP_LOCAL}/public", json={"public": True})
    assert r.status_code == 200 and r.json()["public"] is True
    assert httpx.get(path).text == "hello\n"
    assert httpx.get(f"{server.url}/s/{session}/forward/{HTTP_ANY}/index.txt").status_code == 401  # only that port
    api.post(f"/v1/sessions/{session}/ports/{HTTP_LOCAL}/public", json={"public": False})
    assert httpx.get(path).status_code == 401


def test_forward_host_style(server, api, session):
    r = api.get(f"/forward/{HTTP_ANY}/index.txt", headers={"Host": f"{session}.localhost:{server.port}"})
    assert r.status_code == 200 and r.text == "hello\n"


def test_forward_websocket(server, session):
    url = f"{ws_url(server)}/s/{session}/forward/{WS}/socket"
    with ws_connect(url, auth(server)) as ws:
        for message in ("hello", "x" * 70_000):
            ws.send(message)
            assert ws.recv(timeout=30) == message
        blob = os.urandom(256 * 1024)
        ws.send(blob)
        assert ws.recv(timeout=30) == blob


# --- chaser forward ------------------------------------------------------------------------------
def test_chaser_forward_raw_tcp(server, session, tmp_path):
    env = cli_env(server, session, tmp_path)
    local = free_port()
    proc = subprocess.Popen([*CHASER, "forward", str(TCP_ECHO), str(local)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        line = proc.stdout.readline().decode()
        assert f"127.0.0.1:{local}" in line, (line, proc.stderr.read1(2000) if proc.poll() is not None else "")
        for round_ in range(2):  # two connections, each its own tunnel
            with socket.create_connection(("127.0.0.1", local), timeout=30) as conn:
                conn.sendall(f"line {round_} one\nline {round_} two\n".encode())
                data = b""
                while data.count(b"\n") < 2:
                    chunk = conn.recv(4096)
                    assert chunk
                    data += chunk
                assert data == f"line {round_} one\nline {round_} two\n".encode()
        # and HTTP through the same kind of tunnel
        http_proc = subprocess.Popen([*CHASER, "forward", "--session", session, str(HTTP_LOCAL), "0"], env=env,
                                     cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            address = http_proc.stdout.readline().decode()
            port = int(address.split("127.0.0.1:")[1].split()[0].strip("/"))
            assert httpx.get(f"http://127.0.0.1:{port}/index.txt", timeout=60).text == "hello\n"
        finally:
            os.killpg(http_proc.pid, signal.SIGINT)
            assert http_proc.wait(30) in (0, 130)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(30) in (0, 130)


def test_no_processes_left(server, api, session):
    wait_no_ptys(api, session)
    out = run(api, session, "ps -eo args 2>/dev/null || ls /proc")
    assert "bash -l" not in out and "--norc" not in out
