"""The agent's envd (chaser/agent/envd): the E2B sandbox API, reached as the host reaches
it, through the agent's `/relay?port=49983`, with HTTP/1.1 over the relay (h11)."""

import asyncio
import base64
import hashlib
import json
import os
import struct

import aiohttp
import h11
import pytest

from tests.support import async_wait_until

ENVD_PORT = 49983


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


class Reply:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    def frames(self):
        """A Connect stream's envelopes: [(flags, message)]."""
        out, data = [], self.body
        while data:
            flags, length = struct.unpack(">BI", data[:5])
            out.append((flags, json.loads(data[5:5 + length])))
            data = data[5 + length:]
        return out


async def envd(http, agent, method, target, *, body=b"", headers=None, until_close=True):
    """One request to envd over a fresh relay; the whole response."""
    ws = await http.ws_connect(f"{agent.url}/relay?port={ENVD_PORT}", headers=agent.headers)
    conn = h11.Connection(h11.CLIENT)
    hdrs = [("host", "localhost"), ("connection", "close"), ("content-length", str(len(body)))]
    hdrs += list((headers or {}).items())
    await ws.send_bytes(conn.send(h11.Request(method=method, target=target, headers=hdrs)))
    if body:
        await ws.send_bytes(conn.send(h11.Data(data=body)))
    await ws.send_bytes(conn.send(h11.EndOfMessage()))
    status, rheaders, chunks = None, {}, []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            msg = await ws.receive(timeout=30)
            conn.receive_data(msg.data if msg.type == aiohttp.WSMsgType.BINARY else b"")
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            rheaders = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            break
    await ws.close()
    return Reply(status, rheaders, b"".join(chunks))


def envelope(message, flags=0):
    data = json.dumps(message).encode()
    return struct.pack(">BI", flags, len(data)) + data


async def rpc(http, agent, name, message):
    return await envd(http, agent, "POST", f"/{name}", body=json.dumps(message).encode(),
                      headers={"content-type": "application/json"})


async def start(http, agent, cmd, **extra):
    # (not `-l` as the SDK sends: on this host a login shell runs pyenv init, which can block for a minute)
    message = {"process": {"cmd": "/bin/bash", "args": ["-c", cmd], **extra.pop("process", {})}, **extra}
    reply = await envd(http, agent, "POST", "/process.Process/Start", body=envelope(message),
                       headers={"content-type": "application/connect+json"})
    assert reply.status == 200 and reply.headers["content-type"] == "application/connect+json"
    return reply.frames()


def output(frames, kind):
    return b"".join(base64.b64decode(m["event"]["data"][kind]) for _f, m in frames
                    if "data" in m.get("event", {}) and kind in m["event"]["data"])


async def test_health_is_204(http, agent):
    assert (await envd(http, agent, "GET", "/health")).status == 204


async def test_start_streams_start_output_and_end(http, agent, tmp_path):
    frames = await start(http, agent, "echo out; echo err >&2; echo $FOO; pwd; exit 3",
                         process={"envs": {"FOO": "bar"}, "cwd": str(tmp_path)})
    assert "start" in frames[0][1]["event"] and frames[0][1]["event"]["start"]["pid"] > 0
    assert output(frames, "stdout") == f"out\nbar\n{tmp_path}\n".encode()
    assert output(frames, "stderr") == b"err\n"
    assert frames[-1] == (0x02, {})  # end of stream
    end = frames[-2][1]["event"]["end"]
    assert end == {"exitCode": 3, "exited": True, "status": "exit status 3"}


async def test_start_deadline_kills_and_ends_with_deadline_exceeded(http, agent):
    reply = await envd(http, agent, "POST", "/process.Process/Start",
                       body=envelope({"process": {"cmd": "/bin/sleep", "args": ["30"]}}),
                       headers={"content-type": "application/connect+json", "connect-timeout-ms": "500"})
    frames = reply.frames()
    pid = frames[0][1]["event"]["start"]["pid"]
    assert frames[-1][0] == 0x02 and frames[-1][1]["error"]["code"] == "deadline_exceeded"

    def gone():
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except OSError:
            return True

    await async_wait_until(gone, 10)


async def test_unknown_command_is_invalid_argument(http, agent):
    reply = await envd(http, agent, "POST", "/process.Process/Start",
                       body=envelope({"process": {"cmd": "/no/such/program"}}),
                       headers={"content-type": "application/connect+json"})
    (flags, end), = reply.frames()  # a stream's error is its end-of-stream message
    assert flags == 0x02 and end["error"]["code"] == "invalid_argument"


async def test_background_stdin_list_connect_and_kill(http, agent, tmp_path):
    marker = tmp_path / "echoed"
    stream = asyncio.ensure_future(start(http, agent, f"read line; echo got:$line; touch {marker}; sleep 30",
                                         stdin=True, tag="bg"))

    async def listed():
        reply = await rpc(http, agent, "process.Process/List", {})
        return [p for p in reply.json()["processes"] if p.get("tag") == "bg"]

    (info,) = await async_wait_until(listed, 10)
    pid = info["pid"]
    assert info["config"]["cmd"] == "/bin/bash"
    watcher = asyncio.ensure_future(envd(http, agent, "POST", "/process.Process/Connect",
                                         body=envelope({"process": {"tag": "bg"}}),
                                         headers={"content-type": "application/connect+json"}))
    reply = await rpc(http, agent, "process.Process/SendInput",
                      {"process": {"pid": pid}, "input": {"stdin": base64.b64encode(b"hello\n").decode()}})
    assert reply.status == 200 and reply.json() == {}
    await async_wait_until(marker.exists, 10)
    reply = await rpc(http, agent, "process.Process/SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})
    assert reply.status == 200
    frames = await asyncio.wait_for(stream, 20)
    assert output(frames, "stdout") == b"got:hello\n"
    assert frames[-2][1]["event"]["end"]["status"] == "signal: killed"
    assert frames[-2][1]["event"]["end"]["exitCode"] == -1
    connected = (await asyncio.wait_for(watcher, 20)).frames()
    assert connected[0][1]["event"]["start"]["pid"] == pid and "end" in connected[-2][1]["event"]
    reply = await rpc(http, agent, "process.Process/SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})
    assert reply.status == 404 and reply.json()["code"] == "not_found"


async def test_pty_output_input_and_resize(http, agent):
    stream = asyncio.ensure_future(start(http, agent, "stty size; read x; echo typed:$x", tag="pty",
                                         pty={"size": {"rows": 30, "cols": 100}}))

    async def listed():
        reply = await rpc(http, agent, "process.Process/List", {})
        return [p for p in reply.json()["processes"] if p.get("tag") == "pty"]

    (info,) = await async_wait_until(listed, 10)
    reply = await rpc(http, agent, "process.Process/Update",
                      {"process": {"pid": info["pid"]}, "pty": {"size": {"rows": 40, "cols": 120}}})
    assert reply.status == 200
    await rpc(http, agent, "process.Process/SendInput",
              {"process": {"pid": info["pid"]}, "input": {"pty": base64.b64encode(b"abc\n").decode()}})
    frames = await asyncio.wait_for(stream, 20)
    text = output(frames, "pty").decode()
    assert "typed:abc" in text and frames[-2][1]["event"]["end"]["exitCode"] == 0


async def test_filesystem_calls(http, agent, tmp_path):
    base = str(tmp_path)
    reply = await rpc(http, agent, "filesystem.Filesystem/MakeDir", {"path": f"{base}/a/b"})
    assert reply.status == 200 and reply.json()["entry"]["type"] == "FILE_TYPE_DIRECTORY"
    reply = await rpc(http, agent, "filesystem.Filesystem/MakeDir", {"path": f"{base}/a/b"})
    assert reply.status == 409 and reply.json()["code"] == "already_exists"
    (tmp_path / "a" / "f.txt").write_text("hello")
    reply = await rpc(http, agent, "filesystem.Filesystem/Stat", {"path": f"{base}/a/f.txt"})
    entry = reply.json()["entry"]
    assert entry["type"] == "FILE_TYPE_FILE" and entry["size"] == "5" and entry["name"] == "f.txt"
    assert entry["permissions"].startswith("-rw") and entry["modifiedTime"].endswith("Z")
    reply = await rpc(http, agent, "filesystem.Filesystem/Stat", {"path": f"{base}/missing"})
    assert reply.status == 404 and reply.json()["code"] == "not_found"
    reply = await rpc(http, agent, "filesystem.Filesystem/ListDir", {"path": f"{base}/a", "depth": 2})
    assert [e["path"] for e in reply.json()["entries"]] == [f"{base}/a/b", f"{base}/a/f.txt"]
    reply = await rpc(http, agent, "filesystem.Filesystem/ListDir", {"path": f"{base}/a/f.txt"})
    assert reply.status == 400
    reply = await rpc(http, agent, "filesystem.Filesystem/Move",
                      {"source": f"{base}/a/f.txt", "destination": f"{base}/c/g.txt"})
    assert reply.status == 200 and reply.json()["entry"]["path"] == f"{base}/c/g.txt"
    assert (tmp_path / "c" / "g.txt").read_text() == "hello"
    reply = await rpc(http, agent, "filesystem.Filesystem/Remove", {"path": f"{base}/a"})
    assert reply.status == 200 and not (tmp_path / "a").exists()
    reply = await rpc(http, agent, "filesystem.Filesystem/Remove", {"path": f"{base}/a"})
    assert reply.status == 404


async def test_polling_watcher_sees_create_and_remove(http, agent, tmp_path):
    reply = await rpc(http, agent, "filesystem.Filesystem/CreateWatcher", {"path": str(tmp_path)})
    watcher_id = reply.json()["watcherId"]
    (tmp_path / "new.txt").write_text("x")
    (tmp_path / "new.txt").unlink()
    seen = []

    async def events():
        reply = await rpc(http, agent, "filesystem.Filesystem/GetWatcherEvents", {"watcherId": watcher_id})
        seen.extend(reply.json()["events"])
        return {e["type"] for e in seen} >= {"EVENT_TYPE_CREATE", "EVENT_TYPE_REMOVE"}

    await async_wait_until(events, 10)
    assert all(e["name"] == "new.txt" for e in seen)
    assert (await rpc(http, agent, "filesystem.Filesystem/RemoveWatcher", {"watcherId": watcher_id})).status == 200
    reply = await rpc(http, agent, "filesystem.Filesystem/GetWatcherEvents", {"watcherId": watcher_id})
    assert reply.status == 404


async def test_files_upload_multipart_octet_stream_and_download(http, agent, tmp_path):
    data = os.urandom(300_000)
    # As httpx (the SDK) writes it: the full path as the filename, unencoded.
    boundary = "b0undary"
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n"
        for name, content in ((f"{tmp_path}/up/one.bin", data), (f"{tmp_path}/up/two.txt", b"two"))
    ) + f"--{boundary}--\r\n".encode()
    reply = await envd(http, agent, "POST", "/files", body=body,
                       headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert reply.status == 200, reply.body
    assert [w["path"] for w in reply.json()] == [f"{tmp_path}/up/one.bin", f"{tmp_path}/up/two.txt"]
    assert (tmp_path / "up" / "one.bin").read_bytes() == data
    reply = await envd(http, agent, "POST", f"/files?path={tmp_path}/up/three.bin", body=data,
                       headers={"content-type": "application/octet-stream"})
    assert reply.status == 200 and reply.json()[0]["name"] == "three.bin"
    reply = await envd(http, agent, "GET", f"/files?path={tmp_path}/up/three.bin")
    assert reply.status == 200 and hashlib.sha256(reply.body).digest() == hashlib.sha256(data).digest()
    reply = await envd(http, agent, "GET", f"/files?path={tmp_path}/up/missing")
    assert reply.status == 404 and reply.json()["code"] == 404


async def test_a_stream_that_does_not_read_misses_output_but_not_the_end():
    from types import SimpleNamespace

    from chaser.agent.envd.process import SUBSCRIBER_BACKLOG_BYTES, EnvdProcess

    p = EnvdProcess(SimpleNamespace(pid=1), {}, None, None)
    slow, other = p.subscribe(), p.subscribe()
    chunk = b"x" * 65536
    for _ in range(2 * SUBSCRIBER_BACKLOG_BYTES // len(chunk)):
        p.publish({"data": {"stdout": base64.b64encode(chunk).decode()}}, len(chunk))
        if not other.empty():  # one that reads keeps getting everything
            other.get_nowait()
            other.pending_bytes = 0
    p.publish({"end": {"exitCode": 0}})
    assert slow.qsize() == SUBSCRIBER_BACKLOG_BYTES // len(chunk) + 1
    assert slow.pending_bytes <= SUBSCRIBER_BACKLOG_BYTES
    events = [slow.get_nowait()[0] for _ in range(slow.qsize())]
    assert events[-1] == {"end": {"exitCode": 0}}
