"""A fake runtime for API unit tests: VMs that answer like the agent, without QEMU.

Only unit tests use this; tests/integration drives real microVMs."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from pathlib import Path

import pytest

from chaser import errors


class FakeProcess:
    def __init__(self, command: str, *, background: bool, cwd: str) -> None:
        self.id = "c-" + secrets.token_hex(6)
        self.pid = 1000 + len(command)
        self.command = command
        self.cwd = cwd
        self.output = bytearray()
        self.returncode: int | None = None
        self.status = "running"
        self.started_at = time.time()
        self.finished_at: float | None = None
        self.stdin_closed = not background
        self.changed = asyncio.Event()

    def finish(self, code: int, status: str = "completed") -> None:
        self.returncode, self.status, self.finished_at = code, status, time.time()
        self.changed.set()

    def info(self) -> dict:
        return {"id": self.id, "pid": self.pid, "command": self.command, "cwd": self.cwd, "user": "root",
                "status": self.status, "exit_code": self.returncode, "started_at": self.started_at,
                "finished_at": self.finished_at, "output_bytes": len(self.output), "start_offset": 0}


class FakeAgent:
    def __init__(self, vm: FakeVM) -> None:
        self.vm = vm

    async def processes(self):
        return [p.info() for p in self.vm.processes.values()]

    async def process(self, process_id):
        if process_id not in self.vm.processes:
            raise errors.NotFound("no process", code="process_not_found")
        return self.vm.processes[process_id].info()

    async def output(self, process_id, *, offset=0, limit=None, wait_ms=0):
        p = self.vm.processes[process_id]
        limit = limit or 1 << 20
        if offset >= len(p.output) and p.status == "running" and wait_ms:
            p.changed.clear()
            try:
                await asyncio.wait_for(p.changed.wait(), wait_ms / 1000)
            except asyncio.TimeoutError:
                pass
        data = bytes(p.output[offset:offset + limit])
        finished = p.status != "running" and offset + len(data) >= len(p.output)
        return {"offset": offset, "data": data, "next_offset": offset + len(data), "status": p.status,
                "exit_code": p.returncode, "finished": finished}

    async def write_stdin(self, process_id, data, *, close=False):
        p = self.vm.processes[process_id]
        if p.status != "running":
            raise errors.Conflict("process has finished")
        if p.stdin_closed:
            raise errors.Conflict("stdin is closed")
        p.output += data  # a `cat`
        p.changed.set()
        if close:
            p.stdin_closed = True
            p.finish(0)
        return {"written": len(data)}

    async def signal(self, process_id, sig):
        p = self.vm.processes[process_id]
        if p.status != "running":
            raise errors.Conflict("process has finished")
        p.finish(-15, "killed")
        return {"status": "signal_sent", "signal": 15}

    async def selftest(self):
        return {"cwd": "/workspace", "home": "/root", "user": "root", "shell": "/bin/sh",
                "path": "/usr/bin:/bin", "path_entries": ["/usr/bin", "/bin"], "term": "dumb",
                "lang": "C.UTF-8", "workspace_root_present": True,
                "tools": {"python3": "/usr/bin/python3"}, "tool_versions": {"python3": "Python 3.11"}}

    async def stat(self, path):
        if path in self.vm.files:
            return {"path": path, "type": "file", "size": len(self.vm.files[path]), "mode": 0o644, "mtime": 0}
        if any(name.startswith(path.rstrip("/") + "/") for name in self.vm.files) or path in ("/", "/workspace"):
            return {"path": path, "type": "dir", "size": 4096, "mode": 0o755, "mtime": 0}
        raise errors.FileNotFound(f"{path}: no such file or directory", code="file_not_found")

    async def write_file(self, path, content, *, mode=None):
        data = bytearray()
        if isinstance(content, bytes):
            data += content
        else:
            async for chunk in content:  # an exception here leaves nothing written
                data += chunk
        self.vm.files[path] = bytes(data)
        return {"path": path, "size": len(data)}

    async def stream_file(self, path):
        if path not in self.vm.files:
            raise errors.FileNotFound(f"{path}: no such file or directory", code="file_not_found")
        data = self.vm.files[path]
        for start in range(0, len(data), 65536):
            yield data[start:start + 65536]

    async def shutdown(self):
        return None


class FakeVM:
    def __init__(self, spec) -> None:
        self.id = "vm-" + secrets.token_hex(4)
        self.spec = spec
        self.session_id = spec.session_id
        self.boot_method = "fake"
        self.processes: dict[str, FakeProcess] = {}
        self.files: dict[str, bytes] = {}
        self.agent = FakeAgent(self)
        self.stopped = False
        self.crashed = False
        self.exit_reason: str | None = None
        self.exec_delay = 0.0
        self._network = spec.network
        self.network_changes: list = []  # every policy set_network_policy was given
        self.network_error: Exception | None = None  # raised by set_network_policy (e.g. network_unavailable)

    @property
    def alive(self) -> bool:
        return not self.stopped and not self.crashed

    @property
    def network_policy(self):
        from chaser.runtime.egress import EgressPolicy

        return self._network if self._network is not None else EgressPolicy()

    async def set_network_policy(self, policy) -> None:
        if not self.alive:
            raise errors.VMCrashed(self.exit_reason or "the VM stopped")
        if self.network_error is not None:
            raise self.network_error
        self._network = policy
        self.network_changes.append(policy)

    def crash(self) -> None:
        self.crashed = True
        self.exit_reason = "QEMU exited unexpectedly (code -9)"

    async def exec(self, command, *, cwd=None, env=None, user=None, timeout_ms=None, max_output_bytes=None,
                   background=False):
        if not self.alive:
            raise errors.VMCrashed(self.exit_reason or "the VM stopped")
        if command == "boom":
            raise RuntimeError("unexpected failure inside the runtime")
        p = FakeProcess(command, background=background, cwd=cwd or "/workspace")
        self.processes[p.id] = p
        if self.exec_delay:
            await asyncio.sleep(self.exec_delay)
            if not self.alive:
                raise errors.VMCrashed("the VM stopped")
        if background:
            return {"id": p.id, "pid": p.pid, "status": "running", "started_at": p.started_at}
        if command.startswith("echo "):
            p.output += (command[5:] + "\n").encode()
            p.finish(0)
        elif command.startswith("exit "):
            p.finish(int(command[5:]))
        elif command.startswith("printenv "):
            p.output += ((env or {}).get(command[9:], "") + "\n").encode()
            p.finish(0)
        elif command == "pwd":
            p.output += (p.cwd + "\n").encode()
            p.finish(0)
        elif command.startswith("sleep") and timeout_ms:
            p.finish(-9, "timed_out")
        elif command == "binary":
            p.output += b"\xff\xfeok"
            p.finish(0)
        else:
            p.finish(0)
        return {"id": p.id, "pid": p.pid, "status": p.status, "exit_code": p.returncode,
                "output": base64.b64encode(bytes(p.output)).decode(), "output_bytes": len(p.output),
                "truncated": False, "started_at": p.started_at, "finished_at": p.finished_at}

    async def call(self, method, *args, **kwargs):
        if not self.alive:
            raise errors.VMCrashed(self.exit_reason or "the VM stopped")
        return await getattr(self.agent, method)(*args, **kwargs)

    async def stop(self, *, graceful=True, timeout=15.0):
        self.stopped = True
        self.graceful = graceful


class FakeAssets:
    base_rootfs = Path("/nonexistent/base.erofs")


class FakeRuntime:
    def __init__(self) -> None:
        self.assets = FakeAssets()
        self.started: list[FakeVM] = []
        self.fail_with: Exception | None = None
        self.start_delay = 0.0
        # Raised by check_capacity() (e.g. errors.CapacityExhausted); counts the calls.
        self.capacity_error: Exception | None = None
        self.capacity_checks = 0

    def check_capacity(self) -> None:
        self.capacity_checks += 1
        if self.capacity_error is not None:
            raise self.capacity_error

    async def start(self, spec):
        if self.start_delay:
            await asyncio.sleep(self.start_delay)
        if self.fail_with is not None:
            raise self.fail_with
        vm = FakeVM(spec)
        self.started.append(vm)
        return vm

    async def stop_all(self, *, graceful=False):
        for vm in self.started:
            await vm.stop(graceful=graceful)


# --- fixtures shared by the tests/unit/test_api_*.py modules (imported there) ---

def make_settings(tmp_path: Path, **overrides):
    from chaser.config import Settings

    return Settings(home=tmp_path / "home", config_file=tmp_path / "config.json", **overrides)


class Harness:
    """A TestClient over create_app(settings, FakeRuntime()), with an admin key."""

    def __init__(self, tmp_path: Path, **overrides) -> None:
        from fastapi.testclient import TestClient

        from chaser.api import create_app

        self.settings = make_settings(tmp_path, **overrides)
        self.runtime = FakeRuntime()
        self.app = create_app(self.settings, self.runtime, reaper_interval=3600)
        self.services = self.app.state.services
        self.client = TestClient(self.app, raise_server_exceptions=False)
        self.client.__enter__()
        self.admin_key = self.services.keys.create(name="admin", full_access=True).key
        self.client.headers["Authorization"] = f"Bearer {self.admin_key}"

    def key(self, *scopes: str, account_id: str = "personal") -> dict[str, str]:
        key = self.services.keys.create(account_id=account_id, scopes=list(scopes)).key
        return {"Authorization": f"Bearer {key}"}

    def session(self, **body) -> dict:
        response = self.client.post("/v1/sessions", json={"ephemeral": True, **body})
        assert response.status_code == 201, response.text
        return response.json()

    def vm(self, session_id: str) -> FakeVM:
        return self.services.sessions.live[session_id].vm

    def close(self) -> None:
        self.client.__exit__(None, None, None)


@pytest.fixture
def harness(tmp_path):
    h = Harness(tmp_path)
    yield h
    h.close()


def test_fake_vm_answers_like_the_agent():
    async def scenario():
        from chaser.runtime.spec import VMSpec

        vm = await FakeRuntime().start(VMSpec(image_disk=Path("/x"), session_id="s"))
        result = await vm.exec("echo hi")
        assert base64.b64decode(result["output"]) == b"hi\n"
        with pytest.raises(errors.FileNotFound):
            await vm.call("stat", "/missing")

    asyncio.run(scenario())
