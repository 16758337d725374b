"""The official `e2b` Python SDK against a real `chaser server` and real microVMs (docs/e2b.md):
the three environment variables a user sets, then E2B code as it is written for E2B.

The SDK under test is the one pinned in the dev extras; `E2B_SDK_DRIFT=1` (the drift job,
Makefile `test-e2b-drift`) runs the same tests against whatever `e2b` is installed."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import e2b
import httpx
import pytest

from tests.integration.conftest import ServerProcess
from tests.integration.registry import build_feature_image, registry
from tests.support.net import free_port
from tests.support.wait import async_wait_until, wait_until

pytestmark = pytest.mark.vm

SIXTEEN_MIB = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def feature_image(tmp_path_factory):
    """A busybox image on a loopback registry: an OCI reference as a template."""
    work = tmp_path_factory.mktemp("e2b-images")
    with registry(work) as reg:
        layout = work / "layout"
        build_feature_image(work, layout, "v1", marker="one")
        yield reg, reg.push(layout, "v1", "test/e2b-feature")


@pytest.fixture(scope="module")
def chaser(feature_image, tmp_path_factory):
    """The server, its ingress, and the SDK's environment pointed at them."""
    reg, _ref = feature_image
    base = tmp_path_factory.mktemp("e2b-server")
    ingress = free_port()
    server = ServerProcess(home=base / "home", config_file=base / "config.json", extra_env={
        "CHASER_E2B_INGRESS_PORT": str(ingress), "CHASER_REGISTRIES_INSECURE": json.dumps([reg.host])}).start()

    def listening() -> bool:
        with socket.create_connection(("127.0.0.1", ingress), timeout=1):
            return True

    wait_until(listening, 30, ignore=(OSError,))
    saved = {k: os.environ.get(k) for k in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY", "E2B_DEBUG")}
    os.environ.update({"E2B_API_URL": f"{server.url}/e2b", "E2B_SANDBOX_URL": f"http://127.0.0.1:{ingress}",
                       "E2B_API_KEY": server.api_key, "E2B_DEBUG": "false"})
    server.ingress_url = f"http://127.0.0.1:{ingress}"
    yield server
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


@pytest.fixture(scope="module")
def sandbox(chaser):
    """One sandbox of the default template, shared by the tests that only use it."""
    sbx = e2b.Sandbox.create(metadata={"suite": "e2b", "which": "shared"}, timeout=600)
    yield sbx
    sbx.kill()


def test_create_answers_what_the_sdk_needs(sandbox):
    assert sandbox.sandbox_id.startswith("ses_") and "-" not in sandbox.sandbox_id
    info = sandbox.get_info()
    assert info.sandbox_id == sandbox.sandbox_id and info.template_id == "base"
    assert info.metadata == {"suite": "e2b", "which": "shared"}
    assert sandbox.is_running()


def test_run_exit_code_stdout_stderr_user_and_home(sandbox):
    result = sandbox.commands.run("echo out; echo err >&2; whoami; pwd")
    assert result.exit_code == 0
    assert result.stdout == "out\nuser\n/home/user\n"
    assert result.stderr == "err\n"


def test_run_env_and_cwd(sandbox):
    result = sandbox.commands.run("echo $FOO; pwd", envs={"FOO": "bar"}, cwd="/tmp")
    assert result.stdout == "bar\n/tmp\n"


def test_non_zero_exit_raises_the_sdks_exception(sandbox):
    with pytest.raises(e2b.CommandExitException) as failure:
        sandbox.commands.run("echo partial; exit 3")
    assert failure.value.exit_code == 3 and failure.value.stdout == "partial\n"


def test_timeout_raises_and_the_command_is_killed(sandbox):
    with pytest.raises(e2b.TimeoutException):
        sandbox.commands.run("sleep 60; touch /tmp/survived", timeout=2)
    wait_until(lambda: not any("sleep 60" in " ".join([p.cmd, *p.args]) for p in sandbox.commands.list()), 30)


def test_background_command_stdin_and_kill(sandbox):
    handle = sandbox.commands.run("read line; echo got:$line; touch /tmp/got; sleep 600",
                                  background=True, stdin=True)
    assert any(p.pid == handle.pid for p in sandbox.commands.list())
    sandbox.commands.send_stdin(handle.pid, "hello\n")
    wait_until(lambda: sandbox.files.exists("/tmp/got"), 30)
    assert sandbox.commands.kill(handle.pid)
    with pytest.raises(e2b.CommandExitException) as ended:
        handle.wait()
    assert "got:hello" in ended.value.stdout
    assert not sandbox.commands.kill(handle.pid)  # gone: the SDK's NOT_FOUND branch


def test_files(sandbox):
    info = sandbox.files.write("notes/a.txt", "hello")  # relative: under /home/user
    assert info.path == "/home/user/notes/a.txt"
    assert sandbox.files.read("/home/user/notes/a.txt") == "hello"
    assert sandbox.files.exists("notes/a.txt") and not sandbox.files.exists("notes/none.txt")
    assert sandbox.files.make_dir("notes/sub") is True
    assert sandbox.files.make_dir("notes/sub") is False  # already exists
    names = sorted(entry.name for entry in sandbox.files.list("notes"))
    assert names == ["a.txt", "sub"]
    moved = sandbox.files.rename("notes/a.txt", "notes/sub/b.txt")
    assert moved.path == "/home/user/notes/sub/b.txt"
    assert sandbox.files.read("notes/sub/b.txt") == "hello"
    owner = sandbox.commands.run("stat -c %U /home/user/notes/sub/b.txt").stdout.strip()
    assert owner == "user"
    sandbox.files.remove("notes")
    assert not sandbox.files.exists("notes")
    with pytest.raises(e2b.FileNotFoundException):
        sandbox.files.read("notes/sub/b.txt")


def test_sixteen_mib_up_and_down_with_a_hash(sandbox):
    data = os.urandom(SIXTEEN_MIB)
    sandbox.files.write("/tmp/big.bin", data)
    remote = sandbox.commands.run("sha256sum /tmp/big.bin").stdout.split()[0]
    assert remote == hashlib.sha256(data).hexdigest()
    assert hashlib.sha256(bytes(sandbox.files.read("/tmp/big.bin", format="bytes"))).digest() == \
        hashlib.sha256(data).digest()


def test_pty_round_trip(sandbox):
    output = bytearray()
    terminal = sandbox.pty.create(e2b.PtySize(rows=24, cols=80))
    sandbox.pty.send_stdin(terminal.pid, b"echo pty-$((40+2))\nexit\n")
    result = terminal.wait(on_pty=lambda data: output.extend(data))
    assert result.exit_code == 0
    assert b"pty-42" in output


def test_set_timeout_and_list_with_a_metadata_filter(chaser, sandbox):
    before = sandbox.get_info().end_at
    sandbox.set_timeout(1200)
    assert sandbox.get_info().end_at > before
    found = e2b.Sandbox.list(query=e2b.SandboxQuery(metadata={"which": "shared"})).next_items()
    assert [s.sandbox_id for s in found] == [sandbox.sandbox_id]
    assert e2b.Sandbox.list(query=e2b.SandboxQuery(metadata={"which": "nothing"})).next_items() == []


def test_kill_and_what_the_sdk_then_sees(chaser):
    other = e2b.Sandbox.create(metadata={"which": "killed"})
    assert other.commands.run("echo up").stdout == "up\n"
    other.kill()
    assert not other.is_running()  # the ingress's 502 "sandbox … was not found"
    with pytest.raises(e2b.SandboxNotFoundException):
        e2b.Sandbox.get_info(other.sandbox_id)


def test_the_ingress_refuses_wrong_and_foreign_tokens(chaser, sandbox):
    other = e2b.Sandbox.create(metadata={"which": "foreign"})
    try:
        health = "/health"
        target = {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "49983"}
        good = httpx.get(chaser.ingress_url + health, headers={**target, "X-Access-Token": sandbox._envd_access_token})
        assert good.status_code == 204
        wrong = httpx.get(chaser.ingress_url + health, headers={**target, "X-Access-Token": "not-the-token"})
        assert wrong.status_code == 401
        foreign = httpx.get(chaser.ingress_url + health, headers={**target, "X-Access-Token": other._envd_access_token})
        assert foreign.status_code == 401
        assert httpx.get(chaser.ingress_url + "/files?path=/etc/hostname", headers=target).status_code == 401
        # The SDK's signed download URL works without the header, and only for its path.
        url = sandbox.download_url("/etc/hostname")
        assert httpx.get(url, headers=target).status_code == 200
        assert httpx.get(url.replace("hostname", "passwd"), headers=target).status_code == 401
    finally:
        other.kill()


def test_an_oci_image_as_template(chaser, feature_image):
    _reg, ref = feature_image
    sbx = e2b.Sandbox.create(template=ref)
    try:
        assert sbx.get_info().template_id == ref
        assert sbx.commands.run("cat /marker; whoami").stdout == "one\nuser\n"  # busybox: sh for bash
    finally:
        sbx.kill()


def test_metrics_and_a_watched_directory(sandbox):
    (sample,) = sandbox.get_metrics()
    assert sample.cpu_count >= 1 and 0 < sample.mem_used < sample.mem_total and sample.disk_total > 0
    sandbox.files.make_dir("/tmp/watched")
    handle = sandbox.files.watch_dir("/tmp/watched")
    try:
        sandbox.files.write("/tmp/watched/new.txt", "x")
        events = []
        wait_until(lambda: events.extend(handle.get_new_events()) or any(
            e.name == "new.txt" and e.type == e2b.FilesystemEventType.CREATE for e in events), 30)
    finally:
        handle.stop()


async def test_the_async_sdk_and_a_watch_dir_stream(chaser, sandbox):
    sbx = await e2b.AsyncSandbox.connect(sandbox.sandbox_id)
    assert (await sbx.commands.run("echo async")).stdout == "async\n"
    await sbx.files.make_dir("/tmp/streamed")
    events = []
    handle = await sbx.files.watch_dir("/tmp/streamed", on_event=events.append, recursive=True)
    try:
        await sbx.files.write("/tmp/streamed/a.txt", "x")
        await sbx.files.make_dir("/tmp/streamed/sub")
        await sbx.files.write("/tmp/streamed/sub/b.txt", "y")
        await async_wait_until(lambda: {e.name for e in events} >= {"a.txt", "sub", "sub/b.txt"}, 30)
        assert {e.name for e in events if e.type == e2b.FilesystemEventType.CREATE} >= {"a.txt", "sub", "sub/b.txt"}
    finally:
        await handle.stop()

def test_pause_then_connect_resumes_with_memory_and_files(chaser):
    sbx = e2b.Sandbox.create(metadata={"which": "paused"})
    try:
        sbx.files.write("/tmp/kept.txt", "kept")
        background = sbx.commands.run("sleep 900", background=True)
        assert sbx.pause() is True
        assert sbx.get_info().state == "paused"
        assert sbx.pause() is False  # already paused
        resumed = e2b.Sandbox.connect(sbx.sandbox_id)
        assert resumed.get_info().state == "running"
        assert resumed.files.read("/tmp/kept.txt") == "kept"
        assert any(p.pid == background.pid for p in resumed.commands.list())  # memory came back too
    finally:
        sbx.kill()


# A directory with node_modules/e2b: `make setup` installs it there from npm.
JS_SDK = os.environ.get("E2B_JS_SDK") or str(Path(__file__).resolve().parents[2] / "build" / "e2b-js")


def test_the_js_sdk_creates_runs_and_kills(chaser):
    assert os.path.isdir(os.path.join(JS_SDK, "node_modules", "e2b")), "the JS SDK is missing: run `make setup`"
    import shutil
    import subprocess

    created = chaser.client().post("/v1/keys", json={"name": "js", "format": "e2b"})
    key = created.json()["key"]  # the JS SDK wants an e2b_ key
    script = os.path.join(JS_SDK, "smoke.mjs")
    shutil.copy(os.path.join(os.path.dirname(__file__), "e2b_js", "smoke.mjs"), script)
    run = subprocess.run(["node", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "E2B_API_KEY": key})
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout.strip().splitlines()[-1])
    assert answer["stdout"] == "from-js\nuser\n" and answer["exitCode"] == 0
    assert answer["failed"] == 7 and answer["running"] is False
    assert answer["sandboxId"].startswith("ses_")
