"""One contract, two agents: the same assertions against the test fake (tests/support/fakes.py
FakeVM) and against the real in-guest agent run on this host (tests/unit/conftest.py `agent`)
behind the runtime seam (tests/support/agent_vm.py AgentVM). What the service layer may rely
on from a SandboxVM is asserted here once, so the fake and the agent cannot drift apart.

Only commands the fake's tiny shell knows are used (see tests/support/fakes.py)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from chaser import errors
from chaser.runtime import SandboxVM, VMSpec
from tests.support import FakeVM, async_wait_until
from tests.support.agent_vm import AgentVM

EXEC_KEYS = {"id", "pid", "status", "exit_code", "output", "output_bytes", "truncated", "started_at", "finished_at"}
BACKGROUND_KEYS = {"id", "pid", "status", "started_at"}
PROCESS_KEYS = {"id", "pid", "command", "cwd", "user", "status", "exit_code", "signal", "started_at", "finished_at",
                "output_bytes", "start_offset"}
OUTPUT_KEYS = {"offset", "data", "next_offset", "status", "exit_code", "finished"}
STAT_KEYS = {"path", "type", "size", "mode", "mtime"}
SELFTEST_KEYS = {"cwd", "home", "user", "shell", "path", "path_entries", "term", "lang", "workspace_root_present",
                 "tools", "tool_versions"}


@pytest.fixture(params=["fake", "agent"])
async def sandbox(request, tmp_path):
    """(vm, root): a SandboxVM and an empty scratch directory in it."""
    if request.param == "fake":
        vm: SandboxVM = FakeVM(VMSpec(image_disk=Path("/nonexistent/base.erofs"), session_id="contract"))
    else:
        agent = request.getfixturevalue("agent")
        vm = AgentVM(agent.port, agent.token, session_id="contract")
    root = str(tmp_path / "scratch")
    await vm.mkdir(root)
    yield vm, root
    await vm.stop()


def text(result: dict) -> str:
    return base64.b64decode(result["output"]).decode()


async def finished(vm: SandboxVM, process_id: str) -> dict:
    """The process once it ended and its output is complete."""
    return await async_wait_until(lambda: _ended(vm, process_id), timeout=10, message=f"{process_id} never ended")


async def _ended(vm: SandboxVM, process_id: str) -> dict | None:
    info = await vm.process(process_id)
    if info["status"] == "running":
        return None
    tail = await vm.output(process_id, offset=info["output_bytes"])
    return info if tail["finished"] else None


def assert_agent_error(info, kind: type[errors.ChaserError], code: str) -> None:
    assert type(info.value) is kind and info.value.code == code, (type(info.value), info.value.code, info.value)


# --- exec ------------------------------------------------------------------------------------

async def test_exec_echo_and_exit_codes(sandbox):
    vm, root = sandbox
    result = await vm.exec("echo hi", cwd=root)
    assert set(result) == EXEC_KEYS
    assert (result["status"], result["exit_code"], text(result)) == ("completed", 0, "hi\n")
    assert result["output_bytes"] == 3 and result["truncated"] is False
    assert result["id"].startswith("c-") and isinstance(result["pid"], int)
    assert result["finished_at"] >= result["started_at"]
    failed = await vm.exec("exit 3", cwd=root)
    assert (failed["status"], failed["exit_code"], text(failed)) == ("completed", 3, "")
    words = await vm.exec(["echo", "a  b", "c"], cwd=root)  # argv: no shell splitting
    assert text(words) == "a  b c\n"
    quoted = await vm.exec("echo 'x  y'", cwd=root)  # a string goes through the shell
    assert text(quoted) == "x  y\n"


async def test_exec_env(sandbox):
    vm, root = sandbox
    result = await vm.exec("printenv GREETING", env={"GREETING": "hello there"}, cwd=root)
    assert (result["exit_code"], text(result)) == (0, "hello there\n")
    unset = await vm.exec("printenv CHASER_CONTRACT_UNSET", cwd=root)
    assert (unset["exit_code"], text(unset)) == (1, "")
    assert text(await vm.exec("printenv CHASER", cwd=root)) == "1\n"  # every process is told it is in a sandbox
    with pytest.raises(errors.InvalidRequest) as bad:
        await vm.exec("true", env={"A": 1}, cwd=root)
    assert_agent_error(bad, errors.InvalidRequest, "invalid_request")


async def test_exec_cwd(sandbox):
    vm, root = sandbox
    assert text(await vm.exec("pwd", cwd=root)) == root + "\n"
    await vm.mkdir(f"{root}/sub")
    assert text(await vm.exec("pwd", cwd=f"{root}/sub/../sub")) == f"{root}/sub\n"  # normalised
    for bad in (f"{root}/missing", "relative/dir"):
        with pytest.raises(errors.InvalidRequest) as info:
            await vm.exec("pwd", cwd=bad)
        assert_agent_error(info, errors.InvalidRequest, "invalid_request")


async def test_exec_output_cap_and_timeout(sandbox):
    vm, root = sandbox
    capped = await vm.exec("echo hello", cwd=root, max_output_bytes=3)
    assert (text(capped), capped["output_bytes"], capped["truncated"]) == ("lo\n", 6, True)  # the tail is kept
    timed = await vm.exec("sleep 5", cwd=root, timeout_ms=200)
    assert (timed["status"], timed["exit_code"]) == ("timed_out", -9)
    for bad in ("", [], ["echo", 1]):
        with pytest.raises(errors.InvalidRequest):
            await vm.exec(bad, cwd=root)


# --- background processes ----------------------------------------------------------------------

async def test_background_output_and_stdin(sandbox):
    vm, root = sandbox
    started = await vm.exec("cat", background=True, cwd=root)
    assert set(started) == BACKGROUND_KEYS and started["status"] == "running"
    pid = started["id"]
    assert await vm.write_stdin(pid, b"hello\n") == {"written": 6}
    chunk = await vm.output(pid, offset=0, wait_ms=5000)  # returns once the echo arrives
    assert set(chunk) == OUTPUT_KEYS
    assert (chunk["data"], chunk["offset"], chunk["next_offset"]) == (b"hello\n", 0, 6)
    assert (chunk["status"], chunk["exit_code"], chunk["finished"]) == ("running", None, False)
    assert await vm.write_stdin(pid, b"\x00bin", close=True) == {"written": 4}
    info = await finished(vm, pid)
    assert set(info) == PROCESS_KEYS
    assert (info["status"], info["exit_code"], info["signal"], info["output_bytes"]) == ("completed", 0, None, 10)
    assert info["command"] == "cat" and info["cwd"] == root and info["finished_at"] >= info["started_at"]
    rest = await vm.output(pid, offset=6, wait_ms=5000)
    assert (rest["data"], rest["next_offset"], rest["finished"]) == (b"\x00bin", 10, True)
    part = await vm.output(pid, offset=1, limit=3)
    assert (part["data"], part["next_offset"], part["finished"]) == (b"ell", 4, False)  # more after next_offset
    with pytest.raises(errors.Conflict) as late:
        await vm.write_stdin(pid, b"late")
    assert_agent_error(late, errors.Conflict, "conflict")


async def test_a_foreground_process_has_no_stdin_and_a_background_one_ends_on_its_own(sandbox):
    vm, root = sandbox
    done = await vm.exec("cat", cwd=root)  # stdin at EOF: does not hang
    assert (done["exit_code"], text(done)) == (0, "")
    short = await vm.exec("echo bg", background=True, cwd=root)
    info = await finished(vm, short["id"])
    assert (info["status"], info["exit_code"]) == ("completed", 0)
    assert (await vm.output(short["id"]))["data"] == b"bg\n"


async def test_signal(sandbox):
    vm, root = sandbox
    sleeper = (await vm.exec("sleep 30", background=True, cwd=root))["id"]
    with pytest.raises(errors.InvalidRequest) as bogus:
        await vm.signal(sleeper, "BOGUS")
    assert_agent_error(bogus, errors.InvalidRequest, "invalid_signal")
    assert await vm.signal(sleeper, "TERM") == {"status": "signal_sent", "signal": 15}
    info = await finished(vm, sleeper)
    assert (info["status"], info["exit_code"], info["signal"]) == ("killed", -15, 15)
    with pytest.raises(errors.Conflict):
        await vm.signal(sleeper, 9)
    other = (await vm.exec("sleep 30", background=True, cwd=root))["id"]
    assert await vm.signal(other, "SIGKILL") == {"status": "signal_sent", "signal": 9}
    assert (await finished(vm, other))["exit_code"] == -9


async def test_background_timeout(sandbox):
    vm, root = sandbox
    started = await vm.exec("sleep 30", background=True, timeout_ms=200, cwd=root)
    info = await finished(vm, started["id"])
    assert (info["status"], info["exit_code"]) == ("timed_out", -9)


async def test_unknown_process_is_process_not_found(sandbox):
    vm, _ = sandbox
    calls = (lambda: vm.process("c-nope"), lambda: vm.output("c-nope"),
             lambda: vm.write_stdin("c-nope", b"x"), lambda: vm.signal("c-nope", "TERM"))
    for call in calls:
        with pytest.raises(errors.NotFound) as info:
            await call()
        assert_agent_error(info, errors.NotFound, "process_not_found")


async def test_processes_lists_every_process_with_its_info(sandbox):
    vm, root = sandbox
    first = await vm.exec("echo listed", cwd=root)
    running = await vm.exec("sleep 30", background=True, cwd=root)
    try:
        listing = {p["id"]: p for p in await vm.processes()}
        assert {first["id"], running["id"]} <= set(listing)
        assert all(set(p) == PROCESS_KEYS for p in listing.values())
        assert listing[first["id"]]["status"] == "completed" and listing[running["id"]]["status"] == "running"
        assert listing[running["id"]] == await vm.process(running["id"])
    finally:
        await vm.signal(running["id"], "KILL")


async def test_selftest_shape(sandbox):
    vm, _ = sandbox
    facts = await vm.selftest()
    assert set(facts) == SELFTEST_KEYS
    assert facts["user"] == "root" and facts["lang"] == "C.UTF-8" and "/usr/bin" in facts["path_entries"]
    assert facts["path_entries"] == facts["path"].split(":")


# --- files -------------------------------------------------------------------------------------

async def read(vm: SandboxVM, path: str) -> bytes:
    return b"".join([chunk async for chunk in vm.stream_file(path)])


async def test_files_write_stat_read_list(sandbox):
    vm, root = sandbox
    data = os.urandom(200_000)
    path = f"{root}/sub/dir/blob.bin"
    assert await vm.write_file(path, data, mode="0600") == {"path": path, "size": len(data)}  # parents made
    stat = await vm.stat(path)
    assert set(stat) == STAT_KEYS
    assert (stat["path"], stat["type"], stat["size"], stat["mode"]) == (path, "file", len(data), 0o600)
    assert await read(vm, path) == data
    assert await vm.write_file(path, b"small") == {"path": path, "size": 5}  # replaced; the mode is the default
    assert (await read(vm, path), (await vm.stat(path))["mode"]) == (b"small", 0o644)

    async def chunks():
        yield b"one "
        yield b"two"

    assert await vm.write_file(f"{root}/streamed", chunks()) == {"path": f"{root}/streamed", "size": 7}
    assert await read(vm, f"{root}/streamed") == b"one two"
    assert await read(vm, f"{root}/sub/../streamed") == b"one two"  # paths are normalised
    listing = await vm.list_dir(f"{root}/sub/dir")
    assert listing["path"] == f"{root}/sub/dir"
    assert [(e["name"], e["type"], e["size"]) for e in listing["entries"]] == [("blob.bin", "file", 5)]
    assert all(set(e) == STAT_KEYS - {"path"} | {"name"} for e in listing["entries"])
    top = await vm.list_dir(root)
    assert [(e["name"], e["type"]) for e in top["entries"]] == [("streamed", "file"), ("sub", "dir")]  # by name
    assert (await vm.stat(f"{root}/sub"))["type"] == "dir"


async def test_files_mkdir_and_remove(sandbox):
    vm, root = sandbox
    assert await vm.mkdir(f"{root}/a/b/c") == {"path": f"{root}/a/b/c"}
    assert (await vm.stat(f"{root}/a/b/c"))["type"] == "dir"
    assert await vm.mkdir(f"{root}/a/b/c") == {"path": f"{root}/a/b/c"}  # already there: fine
    await vm.write_file(f"{root}/a/b/file", b"x")
    with pytest.raises(errors.Conflict) as busy:
        await vm.remove(f"{root}/a")  # not empty, not recursive
    assert_agent_error(busy, errors.Conflict, "conflict")
    assert await vm.remove(f"{root}/a/b/file") == {"path": f"{root}/a/b/file", "deleted": True}
    assert await vm.remove(f"{root}/a/b/c") == {"path": f"{root}/a/b/c", "deleted": True}  # empty: no flag needed
    await vm.write_file(f"{root}/a/b/again", b"y")
    assert await vm.remove(f"{root}/a", recursive=True) == {"path": f"{root}/a", "deleted": True}
    with pytest.raises(errors.FileNotFound):
        await vm.stat(f"{root}/a/b/again")
    assert (await vm.list_dir(root))["entries"] == []


async def test_file_errors(sandbox):
    vm, root = sandbox
    missing = f"{root}/missing"
    for call in (lambda: vm.stat(missing), lambda: read(vm, missing), lambda: vm.list_dir(missing),
                 lambda: vm.remove(missing), lambda: vm.list_dir(f"{missing}/deeper")):
        with pytest.raises(errors.FileNotFound) as info:
            await call()
        assert_agent_error(info, errors.FileNotFound, "file_not_found")
        assert missing in str(info.value)
    await vm.write_file(f"{root}/plain", b"x")
    with pytest.raises(errors.FileNotFound) as under_a_file:
        await vm.write_file(f"{root}/plain/child", b"y")  # a file where a directory should be
    assert_agent_error(under_a_file, errors.FileNotFound, "file_not_found")
    with pytest.raises(errors.InvalidRequest) as directory:
        await read(vm, root)
    assert_agent_error(directory, errors.InvalidRequest, "is_a_directory")
    with pytest.raises(errors.InvalidRequest) as onto_directory:
        await vm.write_file(root, b"z")
    assert_agent_error(onto_directory, errors.InvalidRequest, "is_a_directory")
    for bad in ("relative/path", f"{root}/nul\0byte"):
        with pytest.raises(errors.InvalidRequest) as invalid:
            await vm.stat(bad)
        assert_agent_error(invalid, errors.InvalidRequest, "invalid_request")
    with pytest.raises(errors.InvalidRequest):
        await vm.write_file(f"{root}/moded", b"x", mode="rwx")


async def test_a_stopped_vm_answers_vm_crashed(sandbox):
    vm, root = sandbox
    await vm.stop()
    assert not vm.alive
    for call in (lambda: vm.exec("echo x", cwd=root), lambda: vm.stat(root), lambda: vm.processes()):
        with pytest.raises(errors.VMCrashed):
            await call()
    await vm.stop()  # idempotent
