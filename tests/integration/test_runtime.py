"""The microVM runtime end to end: real QEMU, real agent, under TCG here."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from chaser import errors
from chaser.diskcopy import copy_disk
from chaser.vm.runtime import VMSpec
from tests.integration.vm_fixtures import pid_alive
from tests.support import async_wait_until

pytestmark = [pytest.mark.vm, pytest.mark.asyncio(loop_scope="session")]


def text(result: dict) -> str:
    return base64.b64decode(result["output"]).decode()


async def ended(vm, process_id: str) -> dict:
    """The process's info once it is no longer running."""
    async def info() -> dict | None:
        found = await vm.process(process_id)
        return found if found["status"] != "running" else None

    return await async_wait_until(info, 10, interval=0.1, message=f"process {process_id} still running")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_restored_vm_runs_commands(vm):
    assert vm.boot_method in ("template", "pool")  # restored: itself, or earlier by the warm pool
    result = await vm.exec("echo hello; echo oops >&2; exit 3")
    assert result["exit_code"] == 3
    assert result["status"] == "completed"
    assert "hello" in text(result) and "oops" in text(result)


async def test_exec_env_cwd_and_default_workdir(vm):
    result = await vm.exec("pwd; echo $GREETING", env={"GREETING": "hi there"})
    assert text(result).split("\n")[:2] == ["/workspace", "hi there"]
    result = await vm.exec("pwd", cwd="/tmp")
    assert text(result).strip() == "/tmp"


async def test_exec_runs_in_the_sandbox_root_not_the_guest_os(vm):
    # The base image has git and bash; the guest OS (minbase + python) has neither.
    result = await vm.exec("command -v git; command -v bash; cat /etc/hostname && mount | grep -c overlay")
    lines = text(result).split()
    assert lines[0].endswith("/git") and lines[1].endswith("/bash")
    assert lines[2] == "sandbox"


async def test_exec_as_another_user(vm):
    result = await vm.exec("id -un; echo $HOME", user="nobody")
    assert text(result).split() == ["nobody", "/nonexistent"]


async def test_timeout_kills_the_process_group(vm):
    started = time.monotonic()
    result = await vm.exec("sleep 300 & sleep 300; echo never", timeout_ms=1500)
    assert result["status"] == "timed_out"
    assert time.monotonic() - started < 30
    check = await vm.exec("pgrep -c -x sleep || true")
    assert text(check).strip() == "0"


async def test_flood_is_capped_and_vm_stays_responsive(vm):
    result = await vm.exec("head -c 20000000 /dev/zero | tr '\\0' x", max_output_bytes=4096)
    assert result["truncated"] is True
    assert result["output_bytes"] == 20_000_000
    assert len(base64.b64decode(result["output"])) == 4096
    assert text(await vm.exec("echo alive")).strip() == "alive"


async def test_background_stdin_round_trip_and_stream_offsets(vm):
    started = await vm.exec("cat", background=True)
    process_id = started["id"]
    assert started["status"] == "running"
    await vm.write_stdin(process_id, b"first line\n")
    chunk = await vm.output(process_id, offset=0, wait_ms=10_000)
    assert chunk["data"] == b"first line\n"
    await vm.write_stdin(process_id, b"second\n", close=True)
    rest = await vm.output(process_id, offset=chunk["next_offset"], wait_ms=10_000)
    assert rest["data"] == b"second\n"
    info = await ended(vm, process_id)
    assert info["status"] == "completed" and info["exit_code"] == 0
    with pytest.raises(errors.Conflict):
        await vm.write_stdin(process_id, b"late")


async def test_signal_to_background_process(vm):
    started = await vm.exec("trap 'echo got-term; exit 7' TERM; echo trapped; while true; do sleep 0.2; done",
                            background=True)
    ready = await vm.output(started["id"], offset=0, wait_ms=20_000)  # the trap is set once this is printed
    assert ready["data"] == b"trapped\n"
    await vm.signal(started["id"], "TERM")
    info = await ended(vm, started["id"])
    assert info["exit_code"] == 7
    output = await vm.output(started["id"], offset=0)
    assert b"got-term" in output["data"]
    with pytest.raises(errors.InvalidRequest):
        await vm.signal(started["id"], "NOPE")


async def test_binary_file_round_trip_16_mib(vm):
    payload = os.urandom(16 * 1024 * 1024 + 123)
    await vm.write_file("/workspace/data/blob.bin", payload)
    back = b"".join([chunk async for chunk in vm.stream_file("/workspace/data/blob.bin")])
    assert hashlib.sha256(back).hexdigest() == hashlib.sha256(payload).hexdigest()
    inside = await vm.exec("sha256sum /workspace/data/blob.bin")
    assert text(inside).split()[0] == hashlib.sha256(payload).hexdigest()
    stat = await vm.stat("/workspace/data/blob.bin")
    assert stat["size"] == len(payload) and stat["type"] == "file"
    with pytest.raises(errors.FileNotFound):
        await vm.stat("/workspace/nope")


async def test_writes_through_symlinks_and_dotdot_stay_in_the_sandbox(vm):
    await vm.exec("ln -sfn / /workspace/to-root && ln -sfn ../../../../.. /workspace/up")
    await vm.write_file("/workspace/up/../../escaped-1", b"one")
    await vm.write_file("/workspace/to-root/escaped-2", b"two")
    # Both resolved inside the sandbox root: visible from inside the sandbox at /.
    result = await vm.exec("cat /escaped-1 /escaped-2")
    assert text(result) == "onetwo"


async def test_pty_echo_resize_and_exit_code(vm):
    async with vm.pty({"rows": 24, "cols": 80}) as ws:
        await ws.send(b"echo pty-$((40+2))\n")
        seen = b""
        while b"pty-42" not in seen:
            seen += await asyncio.wait_for(ws.recv(), 20)
        await ws.send(json.dumps({"type": "resize", "rows": 33, "cols": 111}))
        await ws.send(b"stty size\n")
        while b"33 111" not in seen:
            seen += await asyncio.wait_for(ws.recv(), 20)
        await ws.send(b"exit 5\n")
        exit_frame = None
        while exit_frame is None:
            frame = await asyncio.wait_for(ws.recv(), 20)
            if isinstance(frame, str):
                exit_frame = json.loads(frame)
        assert exit_frame == {"type": "exit", "exit_code": 5}


async def test_relay_reaches_a_server_inside_the_guest(vm):
    await vm.exec("python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1", background=True)

    async def serving() -> bool:
        check = await vm.exec("python3 -c \"import socket; socket.create_connection(('127.0.0.1', 8000))\"")
        return check["exit_code"] == 0

    await async_wait_until(serving, 60, interval=0.2, message="the guest's HTTP server never listened")
    async with vm.relay(8000) as ws:
        await ws.send(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        response = b""
        try:
            while True:
                response += await asyncio.wait_for(ws.recv(), 20)
        except Exception:  # noqa: BLE001 - the server closes after HTTP/1.0
            pass
    assert response.startswith(b"HTTP/1.0 200") and b"Directory listing" in response
    with pytest.raises(errors.PortNotListening):
        async with vm.relay(8999):
            pass


async def test_agent_rejects_wrong_or_missing_token(vm):
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{vm.agent.base_url}/health")).status_code == 401
        bad = await client.get(f"{vm.agent.base_url}/health", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json()["code"] == "unauthorized"


async def test_selftest_facts(vm):
    facts = await vm.selftest()
    assert facts["cwd"] == "/workspace" and facts["user"] == "root"
    assert "/usr/bin" in facts["path_entries"]
    assert {"python3", "git", "node"} <= set(facts["tools"])
    assert facts["tool_versions"]["node"].startswith("v")


async def test_two_vms_are_isolated(runtime, vm):
    other = await runtime.start(VMSpec(image_disk=runtime.base_image_disk, session_id="other", hostname="other"))
    try:
        await vm.exec("echo mine > /workspace/secret")
        result = await other.exec("cat /workspace/secret; hostname")
        assert result["exit_code"] != 0 or "mine" not in text(result)
        assert "other" in text(result)
        assert other.agent.base_url != vm.agent.base_url
    finally:
        await other.stop()


async def test_memory_hog_and_fork_bomb_stay_inside_their_vm(runtime, vm):
    victim = await runtime.start(VMSpec(image_disk=runtime.base_image_disk, session_id="victim"))
    try:
        hog = await victim.exec("python3 -c 'a = bytearray(4 * 1024**3)'", timeout_ms=60_000)
        assert hog["exit_code"] != 0  # MemoryError or OOM kill inside the guest
        busy_from = cpu_seconds(victim.pid)
        await victim.exec("bomb() { bomb | bomb & }; bomb", background=True)
        # The bomb is under way once the victim's QEMU has burnt a second of CPU on it.
        await async_wait_until(lambda: cpu_seconds(victim.pid) - busy_from >= 1.0, 120, interval=0.1,
                               message="the fork bomb never loaded the victim's vCPU")
        result = await vm.exec("echo unaffected")  # another VM keeps working
        assert text(result).strip() == "unaffected"
    finally:
        await victim.stop(graceful=False)
    assert not pid_alive(victim.pid)


async def test_qemu_killed_from_outside_raises_vm_crashed(runtime):
    doomed = await runtime.start(VMSpec(image_disk=runtime.base_image_disk, session_id="doomed"))
    try:
        pending = asyncio.ensure_future(doomed.exec("sleep 600"))

        async def in_flight() -> bool:  # the agent runs the command: the exec is waiting on it
            return any(p["command"] == "sleep 600" and p["status"] == "running" for p in await doomed.processes())

        await async_wait_until(in_flight, 60, interval=0.1, message="the exec never started")
        os.kill(doomed.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(errors.VMCrashed):
            await pending
        assert time.monotonic() - started < 5
        assert doomed.crashed
        with pytest.raises(errors.VMCrashed):
            await doomed.exec("true")
    finally:
        await doomed.stop()
    assert not doomed.dir.exists()


async def test_graceful_stop_flushes_a_persistent_disk(runtime, tmp_path):
    disk = tmp_path / "disk.img"
    first = await runtime.start(VMSpec(image_disk=runtime.base_image_disk, writable_disk=disk))
    await first.exec("echo kept > /workspace/note && mkdir -p /opt/extra")
    await first.stop()
    assert disk.exists()
    second = await runtime.start(VMSpec(image_disk=runtime.base_image_disk, writable_disk=disk))
    try:
        assert text(await second.exec("cat /workspace/note; test -d /opt/extra && echo dir")).split() == ["kept", "dir"]
    finally:
        await second.stop()


async def test_warm_pool_hands_out_a_prepared_vm_with_its_own_identity(runtime, vm):
    # The shared VM's start named the default image; the pool fills in the background.
    await async_wait_until(lambda: runtime.pool.ready, 60, interval=0.1, message="the warm pool never filled")
    pooled = await runtime.start(VMSpec(image_disk=runtime.base_image_disk, session_id="from-pool",
                                        hostname="poolhost", env={"X": "1"}))
    try:
        assert pooled.pooled and pooled.boot_method == "pool"
        command = "hostname; cat /etc/hostname; echo $X $CHASER_SESSION_ID; pwd; ls /workspace | wc -l"
        result = await pooled.exec(command)
        assert text(result).split() == ["poolhost", "poolhost", "1", "from-pool", "/workspace", "0"]
        # The pool's warm-up process is not the session's business.
        assert [p["command"] for p in await pooled.processes()] == [command]
    finally:
        await pooled.stop()
    # A spec the pool cannot serve (own disk) is booted for itself.
    assert not runtime.pool.eligible(VMSpec(image_disk=runtime.base_image_disk, writable_disk=vm.dir / "x"))


def qemu_command_lines() -> list[bytes]:
    lines = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue
        if b"qemu-system" in cmdline:
            lines.append(cmdline)
    return lines


async def test_every_vm_has_its_own_token_and_none_is_on_a_command_line(runtime, vm):
    # A session VM, a pooled (restored, not yet claimed) VM and a cold-booted one.
    await async_wait_until(lambda: runtime.pool.ready, 60, interval=0.1, message="the warm pool never filled")
    cold = await runtime.start(VMSpec(image_disk=runtime.base_image_disk, session_id="cold", boot="cold"))
    try:
        machines = list(runtime.vms.values())
        assert {vm.id, cold.id} < {m.id for m in machines}
        assert any(m.pooled and not m.session_id for m in machines)  # the pool's VM is among them
        tokens = {m.id: m.agent.token for m in machines}
        assert len(set(tokens.values())) == len(machines)
        command_lines = qemu_command_lines()
        assert len(command_lines) >= len(machines)
        for cmdline in command_lines:
            assert b"chaser.token" not in cmdline
            assert not any(token.encode() in cmdline for token in tokens.values())
        meta = json.loads((await runtime.ensure_template()).meta_file.read_text())
        assert "token" not in meta  # the template's token died with its QEMU
        async with httpx.AsyncClient() as client:
            for machine in machines:
                own = await client.get(f"{machine.agent.base_url}/health",
                                       headers={"Authorization": f"Bearer {tokens[machine.id]}"})
                assert own.status_code == 200
                for other, token in tokens.items():
                    if other != machine.id:
                        refused = await client.get(f"{machine.agent.base_url}/health",
                                                   headers={"Authorization": f"Bearer {token}"})
                        assert refused.status_code == 401, (other, machine.id)
    finally:
        await cold.stop()


async def test_forks_have_their_own_tokens_identity_and_entropy(runtime, vm, tmp_path):
    """Two forks of a running VM: each its own QEMU token, session token, hostname and
    RNG output; none accepts another's token; the source goes on (docs/pause-and-fork.md)."""
    await vm.exec("echo before > /tmp/fork-marker")
    state = runtime.settings.sessions_dir / f"test-fork-{os.getpid()}"
    forks = []
    try:
        disk = await runtime.save(vm, state, keep_running=True)
        for index in range(2):
            copy = tmp_path / f"fork-{index}.img"
            await asyncio.to_thread(copy_disk, disk, copy)
            forks.append(await runtime.resume(
                VMSpec(image_disk=runtime.base_image_disk, writable_disk=copy, session_id=f"fork-{index}"),
                state, hostname=f"fork-{index}"))
        machines = [vm, *forks]
        tokens = [m.agent.token for m in machines]
        assert len(set(tokens)) == 3
        outputs = [await m.exec("hostname; cat /tmp/fork-marker; head -c 16 /dev/urandom | od -An -tx1")
                   for m in machines]
        lines = [text(o).split("\n") for o in outputs]
        assert [line[0] for line in lines[1:]] == ["fork-0", "fork-1"] and lines[0][0] != "fork-0"
        assert all(line[1] == "before" for line in lines)
        assert len({line[2] for line in lines}) == 3  # the CRNG was reseeded in each
        async with httpx.AsyncClient() as client:
            for machine in machines:
                for token in tokens:
                    answer = await client.get(f"{machine.agent.base_url}/health",
                                              headers={"Authorization": f"Bearer {token}"})
                    assert answer.status_code == (200 if token == machine.agent.token else 401)
    finally:
        for fork in forks:
            await fork.stop(graceful=False)
        await asyncio.to_thread(shutil.rmtree, state, True)
    assert text(await vm.exec("cat /tmp/fork-marker")) == "before\n"
