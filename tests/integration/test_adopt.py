"""Restarts keep sandboxes (docs/operations.md, "What survives what"): a killed server's
running VMs are adopted by the next server on the same home, with their processes,
files and namespaces; with CHASER_KEEP_VMS_ON_EXIT a clean exit leaves them too; a VM
that died while no server ran ends its session and leaves nothing; a warm pool VM is
never adopted. Real servers, real QEMU microVMs."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest

from tests.integration.conftest import ServerProcess, qemu_pids_under
from tests.support.wait import wait_until

pytestmark = pytest.mark.vm

ENV = {"CHASER_WARM_POOL_SIZE": "0", "CHASER_NETWORK_READY_POOL_SIZE": "0"}


def run(api, sid: str, command: str) -> str:
    r = api.post(f"/v1/sessions/{sid}/exec", json={"command": command, "timeout_ms": 60_000})
    assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
    return str(r.json()["output"])


def namespaces() -> set[str]:
    netns = Path("/run/netns")
    return {e.name for e in netns.iterdir() if e.name.startswith("chaser-")} if netns.is_dir() else set()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie waiting for PID 1 is dead


def vm_of(home: Path, session_id: str) -> dict:
    """The adoption state (chaser/vm/adopt.py) of the session's VM."""
    for state_file in (home / "vms").glob("*/adopt.json"):
        state = json.loads(state_file.read_text())
        if state["session_id"] == session_id:
            return state
    raise AssertionError(f"no VM state for {session_id}")


def start_work(api, sid: str) -> int:
    """A background process and a file the restart must keep."""
    run(api, sid, "echo kept > /workspace/kept.txt && sync")
    return int(run(api, sid, "nohup sleep 1000 >/dev/null 2>&1 & echo $!").strip())


def assert_work_intact(api, sid: str, pid: int) -> None:
    assert run(api, sid, "cat /workspace/kept.txt").strip() == "kept"
    assert run(api, sid, f"kill -0 {pid} && cat /proc/{pid}/cmdline | tr '\\0' ' '").strip() == "sleep 1000"


def restart(srv: ServerProcess, **env: str) -> ServerProcess:
    return ServerProcess(home=srv.home, config_file=srv.config_file, port=srv.port,
                         extra_env={**srv.extra_env, **env}).start()


def assert_nothing_left(home: Path, ours: set[str]) -> None:
    wait_until(lambda: not qemu_pids_under(home), 30, interval=0.2, message="a QEMU outlived the server")
    assert not (ours & namespaces()), "a namespace is left"
    assert not any((home / "vms").iterdir()), "a VM directory is left"


def qmp(home: Path, vm_id: str, command: str) -> dict:
    """One QMP command on the VM's socket (free while no server runs)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(home / "vms" / vm_id / "qmp.sock"))
        lines = sock.makefile("rwb")
        json.loads(lines.readline())  # the greeting
        answer: dict = {}
        for execute in ("qmp_capabilities", command):
            lines.write(json.dumps({"execute": execute}).encode() + b"\n")
            lines.flush()
            while "return" not in (answer := json.loads(lines.readline())) and "error" not in answer:
                pass  # an event
        return answer


def kill_leftovers(home: Path) -> None:
    for pid in qemu_pids_under(home):  # what a failed test left: stop it, by PID
        os.kill(pid, signal.SIGKILL)


def test_sigkill_restart_adopts_running_sessions(tmp_path):
    before = namespaces()
    srv = ServerProcess(home=tmp_path / "home", config_file=tmp_path / "config.json",
                        extra_env={**ENV, "CHASER_WARM_POOL_SIZE": "1",
                                   "CHASER_NETWORK_HOSTS": '{"adopt.test": "10.9.9.9"}'}).start()
    try:
        with srv.client() as api:
            sid = api.post("/v1/sessions", json={"ephemeral": True}).json()["id"]
            assert run(api, sid, "getent hosts adopt.test").split()[0] == "10.9.9.9"
            api.post("/v1/workspaces", json={"name": "kept"}).raise_for_status()
            workspace_sid = api.post("/v1/sessions", json={"workspace": "kept"}).json()["id"]
            pid = start_work(api, sid)
            workspace_pid = start_work(api, workspace_sid)
            command_id = api.post(f"/v1/sessions/{sid}/exec", json={"command": "echo from-before; sleep 1000",
                                                                   "background": True}).json()["command_id"]
            wait_until(lambda: "warm pool: 1 of 1 ready" in srv.log(), 120, interval=0.2,
                       message="the warm pool never filled")
        qemu = {s: vm_of(srv.home, s)["qemu_pid"] for s in (sid, workspace_sid)}
        pool = set(qemu_pids_under(srv.home)) - set(qemu.values())
        assert len(pool) == 1, (qemu, pool)
        ours = namespaces() - before

        srv.kill(signal.SIGKILL, group=False)  # the server alone: its VMs run on
        assert all(alive(p) for p in qemu.values())
        # One was left stopped (as a disk snapshot or a save the server died in leaves it): it continues.
        frozen = vm_of(srv.home, workspace_sid)["vm_id"]
        assert "return" in qmp(srv.home, frozen, "stop")
        assert qmp(srv.home, frozen, "query-status")["return"]["status"] == "paused"
        srv = restart(srv)
        with srv.client() as api:
            for session, background in ((sid, pid), (workspace_sid, workspace_pid)):
                row = api.get(f"/v1/sessions/{session}").json()
                assert row["status"] == "running", row
                assert_work_intact(api, session, background)
                assert vm_of(srv.home, session)["qemu_pid"] == qemu[session]  # the same QEMU
            # The namespace's resolver died with the server; the adopted namespace has a new one.
            assert run(api, sid, "getent hosts adopt.test").split()[0] == "10.9.9.9"
            # A background command started through the API: the agent kept it and its output.
            listed = api.get(f"/v1/sessions/{sid}/commands").json()
            assert command_id in [command["command_id"] for command in listed["commands"]], listed
            logs = api.get(f"/v1/sessions/{sid}/commands/{command_id}").json()
            assert logs["status"] == "running" and "from-before" in json.dumps(logs), logs
            wait_until(lambda: not any(alive(p) for p in pool), 30, interval=0.2,
                       message="the dead server's pool VM was adopted or left running")
            # The adopted namespaces are in use, not reaped, and new sessions get other ones.
            assert ours <= namespaces()
            fresh = api.post("/v1/sessions", json={"ephemeral": True}).json()["id"]
            assert run(api, fresh, "echo fresh").strip() == "fresh"
            ours |= namespaces() - before
            # An adopted VM pauses and resumes like any (its image, RAM block and disks were kept).
            paused = api.post(f"/v1/sessions/{workspace_sid}/pause")
            assert paused.status_code == 200 and paused.json()["status"] == "paused", paused.text
            assert_work_intact(api, workspace_sid, workspace_pid)  # the exec wakes it
            ours |= namespaces() - before
            assert "adopted 2 running sessions" in srv.log()
        srv.stop()  # SIGTERM, CHASER_KEEP_VMS_ON_EXIT unset: a clean exit stops them
        assert_nothing_left(srv.home, ours)
        srv = restart(srv)
        with srv.client() as api:
            assert api.get(f"/v1/sessions/{sid}").json()["end_reason"] == "server_shutdown"
    finally:
        srv.stop()
        kill_leftovers(srv.home)


def test_sigterm_with_keep_vms_on_exit_keeps_them(tmp_path):
    """Without a namespace too (CHASER_NETWORK=none: the agent behind QEMU's host-forward)."""
    before = namespaces()
    srv = ServerProcess(home=tmp_path / "home", config_file=tmp_path / "config.json",
                        extra_env={**ENV, "CHASER_KEEP_VMS_ON_EXIT": "true", "CHASER_NETWORK": "none"}).start()
    try:
        with srv.client() as api:
            sid = api.post("/v1/sessions", json={"ephemeral": True}).json()["id"]
            pid = start_work(api, sid)
        qemu_pid = vm_of(srv.home, sid)["qemu_pid"]
        ours = namespaces() - before
        srv.stop()  # SIGTERM: a clean exit that leaves the VM running
        assert "left 1 sessions running" in srv.log() and "Application shutdown complete" in srv.log()
        assert alive(qemu_pid)
        srv = restart(srv)
        with srv.client() as api:
            assert api.get(f"/v1/sessions/{sid}").json()["status"] == "running"
            assert_work_intact(api, sid, pid)
            assert vm_of(srv.home, sid)["qemu_pid"] == qemu_pid
        # Ctrl-C in the server's terminal: SIGINT to its whole process group, which QEMU is not in.
        assert srv.process is not None
        os.killpg(srv.process.pid, signal.SIGINT)
        srv.process.wait(60)
        assert alive(qemu_pid)
        srv = restart(srv)
        with srv.client() as api:
            assert_work_intact(api, sid, pid)
            ended = api.delete(f"/v1/sessions/{sid}").json()
            assert ended["status"] == "terminated" and ended["end_reason"] == "terminated"
        srv.stop()
        assert_nothing_left(srv.home, ours)
    finally:
        srv.stop()
        kill_leftovers(srv.home)


def test_vm_killed_while_the_server_was_down_ends_its_session(tmp_path):
    before = namespaces()
    srv = ServerProcess(home=tmp_path / "home", config_file=tmp_path / "config.json", extra_env=ENV).start()
    try:
        with srv.client() as api:
            sid = api.post("/v1/sessions", json={"ephemeral": True}).json()["id"]
            kept = api.post("/v1/sessions", json={"ephemeral": True}).json()["id"]
        state = vm_of(srv.home, sid)
        ours = namespaces() - before
        srv.kill(signal.SIGKILL, group=False)
        os.kill(state["qemu_pid"], signal.SIGKILL)  # the VM dies while no server runs
        wait_until(lambda: not alive(state["qemu_pid"]), 30, interval=0.1, message="QEMU did not die")
        srv = restart(srv)
        with srv.client() as api:
            row = api.get(f"/v1/sessions/{sid}").json()
            assert row["status"] == "failed" and row["end_reason"] == "server_restart", row
            events = api.get("/v1/audit/events", params={"resource_id": sid, "action": "session.failed"}).json()
            message = events["events"][0]["metadata"]["message"]
            assert "exited while no server was running" in message, events
            assert api.get(f"/v1/sessions/{kept}").json()["status"] == "running"  # the other one is adopted
            assert run(api, kept, "echo alive").strip() == "alive"
        assert not (srv.home / "vms" / state["vm_id"]).exists(), "the dead VM's directory is left"
        assert f"chaser-{state['slot']}" not in namespaces() or state["slot"] == vm_of(srv.home, kept)["slot"]
        kept_pid = vm_of(srv.home, kept)["qemu_pid"]
        assert qemu_pids_under(srv.home) == [kept_pid]
        with srv.client() as api:
            # An adopted QEMU is not our child: its death is noticed all the same (a pidfd).
            os.kill(kept_pid, signal.SIGKILL)
            row = wait_until(lambda: (r := api.get(f"/v1/sessions/{kept}").json())["status"] != "running" and r,
                             30, interval=0.2, message="the adopted VM's death went unnoticed")
            assert row["status"] == "failed" and row["end_reason"] == "vm_crashed", row
        srv.stop()
        assert_nothing_left(srv.home, ours)
    finally:
        srv.stop()
        kill_leftovers(srv.home)
