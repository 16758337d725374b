"""The in-guest agent, run on the host with --sandbox-root, over real HTTP/WebSocket."""

import asyncio
import base64
import hashlib
import io
import json
import os
import socket
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests.support import async_wait_until


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def call(http, agent, method, path, *, token=None, **kw):
    headers = {"Authorization": f"Bearer {token or agent.token}"}
    async with http.request(method, agent.url + path, headers=headers, **kw) as r:
        body = await r.read()
        try:
            return r.status, json.loads(body)
        except ValueError:
            return r.status, body


async def run(http, agent, command, **kw):
    status, body = await call(http, agent, "POST", "/exec", json={"command": command, **kw})
    assert status == 200, body
    body["text"] = base64.b64decode(body["output"]).decode()
    return body


async def wait_status(http, agent, pid, wanted, timeout=10):
    async def reached():
        _, info = await call(http, agent, "GET", f"/processes/{pid}")
        return info if info["status"] in wanted else None

    return await async_wait_until(reached, timeout, message=f"process {pid} never {sorted(wanted)}")


def live_members_of_group(pgid: int) -> list:
    """Non-zombie processes whose process group is pgid."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            members.append(int(entry))
    return members


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def foreground_commands(pid: int) -> set[str]:
    """Command names in the foreground process group of `pid`'s terminal (where a
    terminal signal goes)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            foreground = int(f.read().rsplit(")", 1)[1].split()[5])  # tpgid
    except OSError:
        return set()
    names = set()
    for member in live_members_of_group(foreground) if foreground > 0 else []:
        try:
            with open(f"/proc/{member}/comm") as f:
                names.add(f.read().strip())
        except OSError:
            continue
    return names


# ----- authentication, health, init -----

async def test_requests_without_valid_token_are_rejected(http, agent):
    async with http.get(agent.url + "/health") as r:
        assert r.status == 401
        assert (await r.json())["code"] == "unauthorized"
    status, body = await call(http, agent, "GET", "/health", token="wrong")
    assert status == 401 and body["code"] == "unauthorized"
    status, body = await call(http, agent, "POST", "/exec", token="wrong", json={"command": "true"})
    assert status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await http.ws_connect(agent.url + "/pty")
    assert exc.value.status == 401


async def test_health(http, agent):
    status, body = await call(http, agent, "GET", "/health")
    assert status == 200
    assert body["status"] == "ok" and body["protocol"] == 1 and body["initialized"] is False


async def test_init_switches_token_and_only_once(http, make_agent):
    a = make_agent()
    boot = a.token
    new = "new-token-" + uuid.uuid4().hex
    init = {"token": new, "session_id": "sess-1", "env": {"FROM_INIT": "yes", "B": "init"},
            "hostname": "box", "time_ns": time.time_ns(), "entropy": base64.b64encode(os.urandom(32)).decode(),
            "disks": None, "user": None, "workdir": None}
    status, body = await call(http, a, "POST", "/init", json=init)
    assert (status, body) == (200, {"status": "ok"})
    assert (await call(http, a, "GET", "/health", token=boot))[0] == 401
    a.token = new
    status, body = await call(http, a, "GET", "/health")
    assert status == 200 and body["initialized"] is True
    assert socket.gethostname() != "box"  # --sandbox-root mode leaves the host alone
    out = await run(http, a, 'echo "$CHASER_SESSION_ID $FROM_INIT $B"', env={"B": "request"})
    assert out["text"] == "sess-1 yes request\n"
    status, body = await call(http, a, "POST", "/init", json=init)
    assert status == 409 and body["code"] == "conflict"


async def test_bad_requests_are_400_and_server_survives(http, agent):
    async with http.post(agent.url + "/exec", data=b"{not json", headers=agent.headers) as r:
        assert r.status == 400 and (await r.json())["code"] == "invalid_request"
    for bad in ({"command": ""}, {"command": []}, {"command": 5}, {"command": "true", "timeout_ms": 0},
                {"command": "true", "env": {"A": 1}}, {"command": "true", "cwd": "/does/not/exist"}):
        status, body = await call(http, agent, "POST", "/exec", json=bad)
        assert status == 400, bad
        assert body["code"] == "invalid_request"
    status, body = await call(http, agent, "GET", "/processes/c-nope")
    assert status == 404 and body["code"] == "process_not_found"
    assert (await call(http, agent, "GET", "/health"))[0] == 200


# ----- exec -----

async def test_exec_exit_codes_and_merged_output(http, agent):
    out = await run(http, agent, "echo out; echo err >&2; exit 7")
    assert out["status"] == "completed" and out["exit_code"] == 7
    assert out["text"] == "out\nerr\n" and out["output_bytes"] == 8 and out["truncated"] is False
    assert out["id"].startswith("c-") and out["finished_at"] >= out["started_at"]
    out = await run(http, agent, "kill -9 $$")
    assert out["exit_code"] == -9
    out = await run(http, agent, ["printf", "%s|", "a b", "c"])
    assert out["text"] == "a b|c|" and out["exit_code"] == 0
    out = await run(http, agent, "cat")  # stdin is at EOF, not hanging
    assert out["exit_code"] == 0 and out["text"] == ""


async def test_exec_env_and_cwd(http, agent):
    out = await run(http, agent, 'echo "$FOO|$CHASER|$HOME|$USER|$LANG|$TERM|$PATH"; pwd', env={"FOO": "bar"})
    assert out["text"] == ("bar|1|/root|root|C.UTF-8|dumb|"
                           "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n/tmp\n")
    out = await run(http, agent, "pwd", cwd="/usr/../etc")
    assert out["text"] == "/etc\n"
    out = await run(http, agent, "ps -o pid=,pgid=,sid= -p $$")
    pid, pgid, sid = map(int, out["text"].split())
    assert pid == pgid == sid  # own session and process group


async def test_exec_timeout_kills_the_whole_group(http, agent):
    start = time.monotonic()
    out = await run(http, agent, "sleep 30 & echo $!; sleep 30", timeout_ms=500)
    assert time.monotonic() - start < 5
    assert out["status"] == "timed_out" and out["exit_code"] == -9
    grandchild = int(out["text"])
    await async_wait_until(lambda: live_members_of_group(out["pid"]) == [], 3,
                           message=f"members of group {out['pid']} survived the timeout")
    assert not alive(grandchild)  # wherever it went, the background child is dead too
    _, info = await call(http, agent, "GET", f"/processes/{out['id']}")
    assert info["status"] == "timed_out" and info["signal"] == 9


async def test_exec_output_is_truncated_to_the_tail(http, agent):
    out = await run(http, agent, "yes | head -c 5000000", max_output_bytes=1000)
    assert out["exit_code"] == 0 and out["truncated"] is True
    assert out["output_bytes"] == 5_000_000
    assert out["text"] == "y\n" * 500


# ----- background processes -----

async def test_background_stdin_round_trip(http, agent):
    status, bg = await call(http, agent, "POST", "/exec", json={"command": "cat", "background": True})
    assert status == 200 and bg["status"] == "running" and bg["pid"] > 0
    status, body = await call(http, agent, "POST", f"/processes/{bg['id']}/stdin", json={"data": "hello\n"})
    assert (status, body) == (200, {"written": 6})
    status, body = await call(http, agent, "GET", f"/processes/{bg['id']}/output?offset=0&wait_ms=5000")
    assert base64.b64decode(body["data"]) == b"hello\n"
    assert body["next_offset"] == 6 and body["finished"] is False and body["status"] == "running"
    status, body = await call(http, agent, "POST", f"/processes/{bg['id']}/stdin",
                              json={"data": base64.b64encode(b"\x00bin").decode(), "encoding": "base64",
                                    "close": True})
    assert (status, body) == (200, {"written": 4})
    info = await wait_status(http, agent, bg["id"], {"completed"})
    assert info["exit_code"] == 0 and info["signal"] is None and info["output_bytes"] == 10
    _, body = await call(http, agent, "GET", f"/processes/{bg['id']}/output?offset=6&wait_ms=2000")
    assert base64.b64decode(body["data"]) == b"\x00bin" and body["finished"] is True
    status, body = await call(http, agent, "POST", f"/processes/{bg['id']}/stdin", json={"data": "late"})
    assert status == 409 and body["code"] == "conflict"
    _, listing = await call(http, agent, "GET", "/processes")
    assert bg["id"] in [p["id"] for p in listing["processes"]]


async def test_background_signal_and_errors(http, agent):
    _, bg = await call(http, agent, "POST", "/exec", json={"command": "sleep 30", "background": True})
    status, body = await call(http, agent, "POST", f"/processes/{bg['id']}/signal", json={"signal": "BOGUS"})
    assert status == 400 and body["code"] == "invalid_signal"
    status, body = await call(http, agent, "POST", f"/processes/{bg['id']}/stdin",
                              json={"data": "!!", "encoding": "base64"})
    assert status == 400
    status, _ = await call(http, agent, "POST", f"/processes/{bg['id']}/signal", json={"signal": "TERM"})
    assert status == 200
    info = await wait_status(http, agent, bg["id"], {"killed"})
    assert info["signal"] == 15 and info["exit_code"] == -15 and info["finished_at"] is not None
    status, body = await call(http, agent, "POST", f"/processes/{bg['id']}/signal", json={"signal": 9})
    assert status == 409


async def test_output_from_offset_and_long_poll(http, agent):
    _, bg = await call(http, agent, "POST", "/exec",
                       json={"command": "printf 0123456789; sleep 0.5; printf abc", "background": True})
    await wait_status(http, agent, bg["id"], {"completed"})
    _, body = await call(http, agent, "GET", f"/processes/{bg['id']}/output?offset=4&limit=3")
    assert base64.b64decode(body["data"]) == b"456" and body["offset"] == 4 and body["next_offset"] == 7
    assert body["finished"] is False  # more data after next_offset
    _, body = await call(http, agent, "GET", f"/processes/{bg['id']}/output?offset=7")
    assert base64.b64decode(body["data"]) == b"789abc" and body["finished"] is True and body["exit_code"] == 0
    # Long poll: returns as soon as output arrives, not after wait_ms.
    _, bg = await call(http, agent, "POST", "/exec", json={"command": "sleep 0.3; echo late", "background": True})
    start = time.monotonic()
    _, body = await call(http, agent, "GET", f"/processes/{bg['id']}/output?offset=0&wait_ms=10000")
    assert base64.b64decode(body["data"]) == b"late\n" and time.monotonic() - start < 5


# ----- PTY -----

async def read_until(ws, needle: bytes, timeout=15):
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf:
        msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        assert msg.type == aiohttp.WSMsgType.BINARY, (msg, buf)
        buf += msg.data
    return buf


async def read_exit(ws, timeout=15):
    while True:
        msg = await ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            return json.loads(msg.data)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg


async def test_pty_shell_echo_resize_and_exit(http, agent):
    ws = await http.ws_connect(agent.url + "/pty?command=/bin/sh&term=xterm", headers=agent.headers)
    await ws.send_bytes(b"echo hello-$((6*7))\n")
    assert b"hello-42" in await read_until(ws, b"hello-42")
    _, body = await call(http, agent, "GET", "/ptys")
    assert [(p["rows"], p["cols"]) for p in body["ptys"]] == [(24, 80)]
    await ws.send_str(json.dumps({"type": "resize", "rows": 40, "cols": 100}))
    await ws.send_bytes(b"stty size; echo $TERM\n")
    await read_until(ws, b"40 100")
    _, body = await call(http, agent, "POST", "/ptys/resize", json={"rows": 30, "cols": 90})
    assert len(body["resized"]) == 1
    await ws.send_bytes(b"stty size\n")
    await read_until(ws, b"30 90")
    await ws.send_bytes(b"exit 3\n")
    assert await read_exit(ws) == {"type": "exit", "exit_code": 3}
    await ws.close()
    _, body = await call(http, agent, "GET", "/ptys")
    assert body["ptys"] == []


async def test_pty_login_shell_default(http, agent):
    ws = await http.ws_connect(agent.url + "/pty?rows=10&cols=50", headers=agent.headers)
    await ws.send_bytes(b"echo $((1+2))-x; stty size\n")
    await read_until(ws, b"10 50")
    await ws.send_bytes(b"exit\n")
    assert (await read_exit(ws))["type"] == "exit"
    await ws.close()


async def test_pty_command_and_interrupt(http, agent):
    ws = await http.ws_connect(agent.url + "/pty?command=" + "tty%3B%20exit%205", headers=agent.headers)
    out = await read_until(ws, b"/dev/pts/")
    assert b"/dev/pts/" in out
    assert await read_exit(ws) == {"type": "exit", "exit_code": 5}
    await ws.close()
    # Ctrl-C via a control message reaches the foreground job.
    ws = await http.ws_connect(agent.url + "/pty?command=sleep%2030", headers=agent.headers)
    _, body = await call(http, agent, "GET", "/ptys")
    await async_wait_until(lambda: "sleep" in foreground_commands(body["ptys"][0]["pid"]), 10,
                           message="sleep is not running in the terminal's foreground job")
    await ws.send_str(json.dumps({"type": "signal", "signal": "INT"}))
    assert await read_exit(ws) == {"type": "exit", "exit_code": -2}
    await ws.close()


async def test_pty_client_disconnect_kills_child(http, agent):
    ws = await http.ws_connect(agent.url + "/pty?command=sleep%20300", headers=agent.headers)
    _, body = await call(http, agent, "GET", "/ptys")
    pid = body["ptys"][0]["pid"]
    await ws.close()
    await async_wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 5,
                           message=f"pty child {pid} not killed and reaped")  # no zombie either


# ----- files -----

async def test_files_roundtrip_and_metadata(http, agent, tmp_path):
    data = os.urandom(16 * 1024 * 1024)
    path = f"{tmp_path}/sub/dir/blob.bin"
    status, body = await call(http, agent, "PUT", f"/files?path={path}&mode=0600", data=io.BytesIO(data))
    assert (status, body) == (200, {"path": path, "size": len(data)})
    assert os.stat(path).st_mode & 0o777 == 0o600
    async with http.get(agent.url + "/files", params={"path": path}, headers=agent.headers) as r:
        assert r.status == 200 and r.content_length == len(data)
        got = await r.read()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    # overwrite is atomic and leaves no temp files
    status, _ = await call(http, agent, "PUT", f"/files?path={path}", data=b"small")
    assert status == 200 and Path(path).read_bytes() == b"small"
    _, listing = await call(http, agent, "GET", f"/files/list?path={tmp_path}/sub/dir")
    assert [(e["name"], e["type"], e["size"]) for e in listing["entries"]] == [("blob.bin", "file", 5)]
    _, st = await call(http, agent, "GET", f"/files/stat?path={tmp_path}/sub")
    assert st["type"] == "dir" and st["path"] == f"{tmp_path}/sub"
    status, _ = await call(http, agent, "POST", "/files/mkdir", json={"path": f"{tmp_path}/a/b/c"})
    assert status == 200 and os.path.isdir(f"{tmp_path}/a/b/c")
    os.symlink("/etc", f"{tmp_path}/a/link")
    _, st = await call(http, agent, "GET", f"/files/stat?path={tmp_path}/a/link")
    assert st["type"] == "symlink"
    # errors
    status, body = await call(http, agent, "GET", f"/files?path={tmp_path}/missing")
    assert status == 404 and body["code"] == "file_not_found"
    status, body = await call(http, agent, "GET", f"/files?path={tmp_path}/sub")
    assert status == 400 and body["code"] == "is_a_directory"
    status, body = await call(http, agent, "GET", "/files?path=relative/x")
    assert status == 400
    status, body = await call(http, agent, "DELETE", f"/files?path={tmp_path}/a")
    assert status == 409  # not empty, not recursive
    status, _ = await call(http, agent, "DELETE", f"/files?path={tmp_path}/a&recursive=true")
    assert status == 200 and not os.path.exists(f"{tmp_path}/a")
    assert os.path.exists("/etc/passwd")  # the symlink was removed, not followed
    status, _ = await call(http, agent, "DELETE", f"/files?path={path}")
    assert status == 200 and not os.path.exists(path)


async def test_paths_cannot_escape_the_sandbox_root(http, make_agent, tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "etc").mkdir(parents=True)
    outside.mkdir()
    (outside / "keep").write_text("precious")
    (root / "etc" / "marker").write_text("inside")
    os.symlink("/etc", root / "link")                     # absolute symlink
    os.symlink("../../../../..", root / "up")             # relative climbing symlink
    os.symlink(str(outside), root / "out")                # points at the host dir
    a = make_agent(str(root))
    name = "chaser-escape-" + uuid.uuid4().hex

    for path in (f"/../../{name}", f"/up/{name}", f"/link/../../{name}"):
        status, body = await call(http, a, "PUT", f"/files?path={path}", data=b"x")
        assert status == 200, body
    assert (root / name).read_bytes() == b"x"
    status, _ = await call(http, a, "PUT", f"/files?path=/link/{name}", data=b"y")
    assert status == 200 and (root / "etc" / name).read_bytes() == b"y"
    # /out points at <root>/<host path of outside>, which does not exist in the root.
    status, body = await call(http, a, "PUT", f"/files?path=/out/{name}", data=b"z")
    assert status == 404 and body["code"] == "file_not_found"
    assert not os.path.exists(f"/etc/{name}") and not os.path.exists(f"/{name}")
    assert not (outside / name).exists() and not os.path.exists(str(tmp_path.parent / name))

    status, body = await call(http, a, "GET", "/files?path=/link/marker")
    assert (status, body) == (200, b"inside")  # /etc of the sandbox, not the host's
    status, _ = await call(http, a, "GET", "/files?path=/up/etc/passwd")
    assert status == 404
    status, _ = await call(http, a, "GET", "/files?path=/../../../etc/passwd")
    assert status == 404
    status, _ = await call(http, a, "GET", "/files/list?path=/out")
    assert status == 404
    status, _ = await call(http, a, "GET", "/files/list?path=/up")
    assert status == 200  # /up is the root itself from inside
    status, _ = await call(http, a, "DELETE", "/files?path=/&recursive=true")
    assert status == 400
    (root / "d").mkdir()
    os.symlink(str(outside), root / "d" / "escape")
    status, _ = await call(http, a, "DELETE", "/files?path=/d&recursive=true")
    assert status == 200 and not (root / "d").exists()
    assert (outside / "keep").read_text() == "precious"
    status, _ = await call(http, a, "GET", "/files?path=/a%00b")
    assert status == 400


# ----- relay, selftest, shutdown -----

async def test_relay_round_trip_and_closed_port(http, agent):
    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        ws = await http.ws_connect(f"{agent.url}/relay?port={port}", headers=agent.headers)
        payload = os.urandom(200_000)
        await ws.send_bytes(payload)
        got = b""
        while len(got) < len(payload):
            msg = await ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.BINARY
            got += msg.data
        assert got == payload
        await ws.close()
    finally:
        server.close()
        await server.wait_closed()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    status, body = await call(http, agent, "GET", f"/relay?port={closed}")
    assert status == 502 and body["code"] == "port_not_listening"
    status, body = await call(http, agent, "GET", "/relay?port=70000")
    assert status == 400


async def test_selftest(http, agent):
    status, body = await call(http, agent, "GET", "/selftest")
    assert status == 200, body
    assert body["user"] == "root" and body["home"] == "/root" and body["cwd"] == "/tmp"
    assert body["lang"] == "C.UTF-8" and "/usr/bin" in body["path_entries"]
    assert "python3" in body["tools"] and body["tool_versions"]["python3"].startswith("Python 3")


async def test_shutdown_kills_processes_and_exits(http, make_agent):
    a = make_agent()
    _, bg = await call(http, a, "POST", "/exec", json={"command": "sleep 300", "background": True})
    status, body = await call(http, a, "POST", "/shutdown")
    assert (status, body) == (202, {"status": "shutting_down"})
    a.proc.wait(10)
    await async_wait_until(lambda: live_members_of_group(bg["pid"]) == [], 5,
                           message="a user process outlived the agent's shutdown")
