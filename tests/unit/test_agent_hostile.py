"""Requests the agent fuzz (tests/support/agent_fuzz.py, tests/integration/test_agent_fuzz.py)
found answered with a 500 or a broken connection, as regression tests: each is the
caller's fault, so a 4xx, and the agent keeps serving."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import time

import httpx
import pytest

from tests.support.agent_fuzz import run


@pytest.fixture
def call(agent):
    def call(method, url, *, body=None, json_body=None, headers=None, params=None):
        with httpx.Client(base_url=agent.url, headers=agent.headers, timeout=30, trust_env=False) as client:
            return client.request(method, url, params=params, json=json_body, content=body, headers=headers)
    return call


def refused(response, status=400, code="invalid_request"):
    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    return response.json()["message"]


def test_a_json_body_is_utf8_whatever_charset_the_content_type_names(call):
    # An unknown charset was a LookupError (500): JSON is UTF-8 (RFC 8259), the charset is not read.
    for charset in ("xx", "latin-1", "utf-16"):
        answer = call("POST", "/exec", body='{"command": "echo é"}'.encode(),
                      headers={"Content-Type": f"application/json; charset={charset}"})
        assert answer.status_code == 200 and answer.json()["exit_code"] == 0, answer.text


@pytest.mark.parametrize("body, headers", [
    (b'{"command": "true"', {"Content-Type": "application/json; charset=xx"}),
    (b"[" * 100_000 + b"]" * 100_000, {"Content-Type": "application/json"}),  # RecursionError
    (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, {}),
    (b"\xff\xfe{}", {}),
])
def test_a_body_that_is_no_json_object_is_400(call, body, headers):
    assert "not valid JSON" in refused(call("POST", "/exec", body=body, headers=headers))


@pytest.mark.parametrize("payload, says", [
    ({"command": "true", "timeout_ms": 10**400}, "timeout_ms out of range"),  # OverflowError in / 1000
    ({"command": "true", "timeout_ms": 2**64}, "timeout_ms out of range"),
    ({"command": "\x00"}, "NUL"),  # ValueError: embedded null byte
    ({"command": ["/bin/echo", "a\x00b"]}, "NUL"),
    ({"command": "\ud800"}, "UTF-8"),  # UnicodeEncodeError
    ({"command": "true", "env": {"A": "\udfff"}}, "UTF-8"),
    ({"command": "true", "cwd": "/\ud800"}, "UTF-8"),
    ({"command": "true", "user": 10**30}, "unknown user"),  # OverflowError in setuid, in the child
    ({"command": "true", "user": "²"}, "unknown user"),  # "²".isdigit() but int("²") fails
])
def test_exec_arguments_the_kernel_cannot_take_are_400(call, payload, says):
    body = json.dumps(payload).encode("utf-8", "surrogatepass")
    assert says in refused(call("POST", "/exec", body=body))


def test_a_signal_that_only_looks_numeric_is_invalid_signal(call):
    process = call("POST", "/exec", json_body={"command": "sleep 30", "background": True}).json()
    try:
        refused(call("POST", f"/processes/{process['id']}/signal", json_body={"signal": "²"}), code="invalid_signal")
    finally:
        assert call("POST", f"/processes/{process['id']}/signal", json_body={"signal": "KILL"}).status_code == 200


@pytest.mark.parametrize("method, path, params, body", [
    ("GET", "/files/stat", {"path": "/" + "x" * 300}, None),  # ENAMETOOLONG
    ("GET", "/files/list", {"path": "/tmp/" + "y" * 5000}, None),
    ("POST", "/files/mkdir", {}, b'{"path": "/tmp/\\ud800"}'),  # UnicodeEncodeError
    ("GET", "/pty", {"term": "xterm\x00"}, None),
    ("GET", "/pty", {"user": str(10**30)}, None),
])
def test_file_and_terminal_arguments_the_kernel_cannot_take_are_400(call, method, path, params, body):
    refused(call(method, path, body=body, params=params))


def test_a_symlink_loop_is_400_not_500(call, tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    refused(call("GET", "/files/stat", params={"path": f"{tmp_path}/loop/x"}))


def test_head_of_a_file_sends_no_body_and_the_connection_stays_in_step(agent, tmp_path):
    """aiohttp's StreamResponse sent the bytes after a HEAD's headers: a kept-alive client
    read them as the start of its next response."""
    (tmp_path / "f").write_bytes(b"HTTP/1.1 200 OK\r\n\r\nforged")
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=10)
    try:
        conn.request("HEAD", f"/files?path={tmp_path}/f", headers=agent.headers)
        head = conn.getresponse()
        assert head.status == 200 and head.getheader("Content-Length") == "25" and head.read() == b""
        with socket.socket(fileno=socket.dup(conn.sock.fileno())) as raw:
            raw.settimeout(0.5)
            with pytest.raises(TimeoutError):
                raw.recv(1, socket.MSG_PEEK)  # nothing more on the wire
        conn.request("GET", "/health", headers=agent.headers)
        assert json.loads(conn.getresponse().read())["status"] == "ok"
    finally:
        conn.close()


def test_an_answer_before_the_body_was_read_closes_the_connection(call, tmp_path):
    """A refused upload (the path is a directory) is answered before its body is read: the answer
    closes the connection, which aiohttp 3.8 (the guest's) otherwise left stalled for the next call."""
    answer = call("PUT", "/files", params={"path": str(tmp_path)}, body=b"x" * 300_000)
    refused(answer, code="is_a_directory")
    assert answer.headers["connection"] == "close"
    read = call("POST", "/exec", json_body={"command": "true"})  # a body read whole: kept alive
    assert read.status_code == 200 and read.headers.get("connection") != "close"


def busybox_root(path):
    """A sandbox root of its own: the fuzz's commands and directories land there, not on this host."""
    for directory in ("bin", "etc", "tmp", "workspace"):
        (path / directory).mkdir()
    shutil.copy(shutil.which("busybox") or "/bin/busybox", path / "bin" / "busybox")
    for tool in ("sh", "echo", "true", "sleep", "printf"):
        (path / "bin" / tool).symlink_to("busybox")
    (path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    return str(path)


def test_a_short_fuzz_of_an_agent_on_this_host_finds_nothing(make_agent, tmp_path):
    """The VM test's fuzzer, briefly, against an agent run here in a root of its own."""
    fuzzed = make_agent(busybox_root(tmp_path))
    started = time.monotonic()
    summary = run("127.0.0.1", fuzzed.port, fuzzed.token, seed=5, count=400)
    assert summary["failures"] == [], summary["failures"][:3]
    assert sum(summary["statuses"].values()) == 400 and time.monotonic() - started < 60
    assert {200, 400, 404} <= set(summary["statuses"])
