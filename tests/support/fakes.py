"""An in-memory runtime for unit tests: `FakeRuntime` implements `chaser.runtime.Runtime`,
`FakeVM` implements `chaser.runtime.SandboxVM`, and answers like the in-guest agent
(docs/agent-protocol.md) without QEMU.

Its errors are made the way the host's agent client makes them
(`chaser.vm.agent_client.error_from_agent`), so the service layer sees the same
exception types and codes. tests/unit/test_agent_contract.py runs one set of
assertions against a FakeVM and against the real agent, so the two cannot drift.

What a FakeVM runs is a tiny shell, one simple command per exec:

    echo WORDS       WORDS and a newline            exit N       exit code N
    printenv NAME    the value (exit 1 if unset)    pwd          the working directory
    true / false     exit 0 / 1                     sync         exit 0
    cat              background: echoes stdin until it is closed; foreground: stdin is at EOF
    sleep N          background: runs until signalled or timed out; foreground: timed out
                     if timeout_ms < N s, else done at once
    binary           the bytes ff fe 6f 6b (test hook)
    boom             raises RuntimeError (test hook: an unexpected runtime failure)

anything else completes at once with exit code 0 and no output. Test hooks:
`hold_exec` (an exec then lasts until the VM stops, as a long command does), `crash()`,
`network_error`, `on_thaw`, `listeners` (relay targets).
"""

from __future__ import annotations

import asyncio
import base64
import json
import posixpath
import secrets
import shlex
import signal as signals
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from chaser import errors
from chaser.agent.errors import ApiError
from chaser.agent.processes import parse_signal as agent_parse_signal
from chaser.agent.protocol import DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_WORKDIR, SANDBOX_PATH
from chaser.agent.safepath import normalize as agent_normalize
from chaser.runtime.egress import EgressPolicy
from chaser.runtime.spec import VMSpec
from chaser.vm.agent_client import error_from_agent

BASE_IMAGE_DISK = Path("/nonexistent/base.erofs")
# A held exec or start that nothing releases fails the test instead of hanging it.
HOLD_LIMIT_S = 30.0


def agent_error(status: int, code: str, message: str) -> errors.ChaserError:
    """What the host's agent client raises for this answer of the agent."""
    return error_from_agent(status, json.dumps({"code": code, "message": message}).encode())


def bad_request(message: str, code: str = "invalid_request") -> errors.ChaserError:
    return agent_error(400, code, message)


def conflict(message: str) -> errors.ChaserError:
    return agent_error(409, "conflict", message)


def file_not_found(path: str) -> errors.ChaserError:
    return agent_error(404, "file_not_found", f"{path}: no such file or directory")


def _agent_rule(rule: Callable[[Any], Any], value: Any) -> Any:
    """Apply one of the agent's own validation rules; its error as the host client sees it."""
    try:
        return rule(value)
    except ApiError as exc:
        raise agent_error(exc.status, exc.code, exc.message) from None


def normalize(path: Any) -> str:
    """The agent's path rule (chaser/agent/safepath.py)."""
    return str(_agent_rule(agent_normalize, path))


def parse_signal(value: str | int) -> int:
    """The agent's signal rule (chaser/agent/processes.py)."""
    return int(_agent_rule(agent_parse_signal, value))


class FakeProcess:
    def __init__(self, command: str | list[str], *, background: bool, cwd: str, user: str = "root") -> None:
        self.id = "c-" + secrets.token_hex(6)
        self.pid = 1000 + secrets.randbelow(30000)
        self.command = command
        self.cwd = cwd
        self.user = user
        self.output = bytearray()
        self.returncode: int | None = None
        self.status = "running"
        self.started_at = time.time()
        self.finished_at: float | None = None
        self.stdin_closed = not background
        self.echoes_stdin = False  # a background `cat`
        self.changed = asyncio.Event()

    @property
    def running(self) -> bool:
        return self.returncode is None

    def write(self, data: bytes) -> None:
        self.output += data
        self.changed.set()

    def finish(self, code: int, status: str | None = None) -> None:
        self.returncode, self.finished_at = code, time.time()
        self.status = status or ("killed" if code < 0 else "completed")
        self.changed.set()

    def info(self) -> dict[str, Any]:
        rc = self.returncode
        return {"id": self.id, "pid": self.pid, "command": self.command, "cwd": self.cwd, "user": self.user,
                "status": self.status, "exit_code": rc, "signal": -rc if rc is not None and rc < 0 else None,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "output_bytes": len(self.output), "start_offset": 0}


class FakeSocket:
    """An `AgentSocket` whose far end is `answer` (bytes in, bytes out)."""

    def __init__(self, answer: Callable[[bytes], bytes]) -> None:
        self.answer = answer
        self.sent: list[str | bytes] = []
        self._incoming: asyncio.Queue[str | bytes | None] = asyncio.Queue()

    async def send(self, message: str | bytes) -> None:
        self.sent.append(message)
        if isinstance(message, bytes):
            await self._incoming.put(self.answer(message))

    async def recv(self) -> str | bytes:
        from websockets.exceptions import ConnectionClosedOK

        message = await self._incoming.get()
        if message is None:
            await self._incoming.put(None)
            raise ConnectionClosedOK(None, None)
        return message

    async def close(self) -> None:
        await self._incoming.put(None)


class FakeVM:
    """One fake microVM (chaser.runtime.SandboxVM)."""

    def __init__(self, spec: VMSpec) -> None:
        self._id = "vm-" + secrets.token_hex(4)
        self.spec = spec
        self.session_id = spec.session_id
        self.procs: dict[str, FakeProcess] = {}
        self.files: dict[str, bytes] = {}  # path -> content; parent directories are implied
        self.modes: dict[str, int] = {}
        self.dirs: set[str] = {"/", "/tmp", spec.workdir or DEFAULT_WORKDIR}
        self.stopped = False
        self.graceful: bool | None = None
        self._crashed = False
        self._oom = False
        self._exit_reason: str | None = None
        self.hold_exec = False
        self._stopped_event = asyncio.Event()
        self._network = spec.network
        self.network_changes: list[EgressPolicy] = []  # every policy set_network_policy was given
        self.network_error: Exception | None = None  # raised by set_network_policy (e.g. network_unavailable)
        self.frozen = False
        self.freeze_events: list[str] = []  # "freeze" / "thaw", in order
        self.on_thaw: Callable[[], None] | None = None  # called just before a thaw takes effect
        self.open_ptys: dict[str, dict[str, Any]] = {}
        self.listeners: dict[int, Callable[[bytes], bytes]] = {}  # relay targets: port -> answer
        self.hostname = spec.hostname

    # --- identity and state ---
    @property
    def id(self) -> str:
        return self._id

    @property
    def boot_method(self) -> str:
        return "fake"

    @property
    def alive(self) -> bool:
        return not self.stopped and not self._crashed

    @property
    def crashed(self) -> bool:
        return self._crashed

    @property
    def exit_reason(self) -> str | None:
        return self._exit_reason

    @property
    def end_reason(self) -> str:
        return "vm_oom" if self._oom else "vm_crashed"

    def crash(self, *, oom: bool = False) -> None:
        """QEMU ends on its own (test hook)."""
        self._crashed, self._oom = True, oom
        self._exit_reason = ("the VM used more memory than its limit and was killed (vm_oom)" if oom
                             else "QEMU exited unexpectedly (code -9)")

    def _check_alive(self) -> None:
        if not self.alive:
            raise errors.VMCrashed(self._exit_reason or "the VM stopped")
        if self.frozen:
            raise RuntimeError("a call on a frozen VM would hang: thaw it first")

    @property
    def network_policy(self) -> EgressPolicy:
        return self._network if self._network is not None else EgressPolicy()

    async def set_network_policy(self, policy: EgressPolicy) -> None:
        if not self.alive:
            raise errors.VMCrashed(self._exit_reason or "the VM stopped")
        if self.network_error is not None:
            raise self.network_error
        self._network = policy
        self.network_changes.append(policy)

    # --- processes ---
    def _env(self, env: dict[str, str] | None) -> dict[str, str]:
        if env is not None and not (isinstance(env, dict)
                                    and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
            raise bad_request("env must be an object of strings")
        return {"PATH": SANDBOX_PATH, "HOME": "/root", "USER": "root", "LOGNAME": "root", "SHELL": "/bin/sh",
                "LANG": "C.UTF-8", "TERM": "dumb", "CHASER_SESSION_ID": self.session_id, "CHASER": "1",
                **self.spec.env, **(env or {})}

    async def exec(self, command: str | list[str], *, cwd: str | None = None, env: dict[str, str] | None = None,
                   user: str | None = None, timeout_ms: int | None = None, max_output_bytes: int | None = None,
                   background: bool = False) -> dict[str, Any]:
        self._check_alive()
        if command == "boom":
            raise RuntimeError("unexpected failure inside the runtime")
        if isinstance(command, str) and command:
            words = shlex.split(command)
        elif isinstance(command, list) and command and all(isinstance(a, str) for a in command):
            words = list(command)
        else:
            raise bad_request("command must be a non-empty string or list of strings")
        if timeout_ms is not None and timeout_ms < 1:
            raise bad_request("timeout_ms must be >= 1")
        variables = self._env(env)
        workdir = normalize(cwd if cwd is not None else self.spec.workdir or DEFAULT_WORKDIR)
        if not self._is_dir(workdir):
            raise bad_request(f"cwd {workdir!r} is not a directory in the sandbox")
        p = FakeProcess(command, background=background, cwd=workdir, user=user or self.spec.user or "root")
        self.procs[p.id] = p
        if self.hold_exec:  # the command outlives the VM: its stop ends the call
            await asyncio.wait_for(self._stopped_event.wait(), HOLD_LIMIT_S)
            raise errors.VMCrashed("the VM stopped")
        name, args = (words[0], words[1:]) if words else ("", [])
        if background and name == "cat" and not args:
            p.echoes_stdin = True
        elif background and name == "sleep":
            if timeout_ms:
                asyncio.get_running_loop().call_later(timeout_ms / 1000, self._time_out, p)
        elif name == "sleep" and timeout_ms and float(args[0] if args else 0) * 1000 > timeout_ms:
            p.finish(-9, "timed_out")
        else:
            self._run(p, name, args, variables)
        if background:
            return {"id": p.id, "pid": p.pid, "status": "running", "started_at": p.started_at}
        limit = DEFAULT_MAX_OUTPUT_BYTES if max_output_bytes is None else max_output_bytes
        tail = bytes(p.output[-limit:]) if limit else b""
        return {"id": p.id, "pid": p.pid, "status": p.status, "exit_code": p.returncode,
                "output": base64.b64encode(tail).decode(), "output_bytes": len(p.output),
                "truncated": len(p.output) > len(tail), "started_at": p.started_at, "finished_at": p.finished_at}

    def _run(self, p: FakeProcess, name: str, args: list[str], env: dict[str, str]) -> None:
        if name == "echo":
            p.write((" ".join(args) + "\n").encode())
            p.finish(0)
        elif name == "exit":
            p.finish(int(args[0]) if args else 0)
        elif name == "printenv":
            if args and args[0] in env:
                p.write((env[args[0]] + "\n").encode())
                p.finish(0)
            else:
                p.finish(1)
        elif name == "pwd":
            p.write((p.cwd + "\n").encode())
            p.finish(0)
        elif name == "false":
            p.finish(1)
        elif name == "binary":
            p.write(b"\xff\xfeok")
            p.finish(0)
        else:
            p.finish(0)

    def _time_out(self, p: FakeProcess) -> None:
        if p.running:
            p.finish(-9, "timed_out")

    def _proc(self, process_id: str) -> FakeProcess:
        self._check_alive()
        if process_id not in self.procs:
            raise agent_error(404, "process_not_found", f"no process {process_id!r}")
        return self.procs[process_id]

    async def processes(self) -> list[dict[str, Any]]:
        self._check_alive()
        return [p.info() for p in self.procs.values()]

    async def process(self, process_id: str) -> dict[str, Any]:
        return self._proc(process_id).info()

    async def output(self, process_id: str, *, offset: int = 0, limit: int | None = None,
                     wait_ms: int = 0) -> dict[str, Any]:
        p = self._proc(process_id)
        limit = limit or DEFAULT_MAX_OUTPUT_BYTES
        if offset >= len(p.output) and p.running and wait_ms:
            p.changed.clear()
            try:
                await asyncio.wait_for(p.changed.wait(), wait_ms / 1000)
            except TimeoutError:
                pass
        data = bytes(p.output[offset:offset + limit])
        finished = not p.running and offset + len(data) >= len(p.output)
        return {"offset": offset, "data": data, "next_offset": offset + len(data), "status": p.status,
                "exit_code": p.returncode, "finished": finished}

    async def write_stdin(self, process_id: str, data: bytes, *, close: bool = False) -> dict[str, Any]:
        p = self._proc(process_id)
        if not p.running:
            raise conflict("process has finished")
        if p.stdin_closed:
            raise conflict("stdin is closed")
        if p.echoes_stdin:
            p.write(data)
        if close:
            p.stdin_closed = True
            if p.echoes_stdin:
                p.finish(0)
        return {"written": len(data)}

    async def signal(self, process_id: str, signal: str | int) -> dict[str, Any]:
        p = self._proc(process_id)
        number = parse_signal(signal)
        if not p.running:
            raise conflict("process has finished")
        if number not in (signals.SIGCHLD, signals.SIGWINCH, signals.SIGURG, signals.SIGCONT):  # ignored by default
            p.finish(-number)
        return {"status": "signal_sent", "signal": number}

    async def selftest(self) -> dict[str, Any]:
        self._check_alive()
        return {"cwd": self.spec.workdir or DEFAULT_WORKDIR, "home": "/root", "user": "root", "shell": "/bin/sh",
                "path": SANDBOX_PATH, "path_entries": SANDBOX_PATH.split(":"), "term": "dumb",
                "lang": "C.UTF-8", "workspace_root_present": True,
                "tools": {"python3": "/usr/bin/python3"}, "tool_versions": {"python3": "Python 3.11"}}

    # --- files ---
    def _is_dir(self, path: str) -> bool:
        prefix = path.rstrip("/") + "/"
        return path in self.dirs or any(name.startswith(prefix) for name in (*self.files, *self.dirs))

    def _check_parents(self, path: str) -> None:
        parent = posixpath.dirname(path)
        while parent != "/":
            if parent in self.files:  # a file where a directory should be: ENOTDIR
                raise file_not_found(path)
            parent = posixpath.dirname(parent)

    def _add_parents(self, path: str) -> None:
        parent = posixpath.dirname(path)
        while parent not in self.dirs:
            self.dirs.add(parent)
            parent = posixpath.dirname(parent)

    def _describe(self, path: str) -> dict[str, Any]:
        if path in self.files:
            return {"type": "file", "size": len(self.files[path]), "mode": self.modes.get(path, 0o644),
                    "mtime": time.time()}
        return {"type": "dir", "size": 4096, "mode": 0o755, "mtime": time.time()}

    async def write_file(self, path: str, content: bytes | AsyncIterator[bytes], *,
                         mode: str | None = None) -> dict[str, Any]:
        self._check_alive()
        path = normalize(path)
        try:
            bits = int(mode or "0644", 8)
        except ValueError:
            raise bad_request("mode must be an octal string") from None
        if not 0 <= bits <= 0o7777:
            raise bad_request("mode out of range")
        self._check_parents(path)
        if self._is_dir(path):
            raise bad_request(f"{path} is a directory", code="is_a_directory")
        data = bytearray()
        if isinstance(content, bytes):
            data += content
        else:
            async for chunk in content:  # an exception here leaves nothing written
                data += chunk
        self._add_parents(path)
        self.files[path] = bytes(data)
        self.modes[path] = bits
        return {"path": path, "size": len(data)}

    async def stream_file(self, path: str) -> AsyncIterator[bytes]:
        self._check_alive()
        path = normalize(path)
        if path not in self.files:
            if self._is_dir(path):
                raise bad_request(f"{path} is a directory", code="is_a_directory")
            raise file_not_found(path)
        data = self.files[path]
        for start in range(0, len(data), 65536):
            yield data[start:start + 65536]

    async def stat(self, path: str) -> dict[str, Any]:
        self._check_alive()
        path = normalize(path)
        if path not in self.files and not self._is_dir(path):
            raise file_not_found(path)
        return {"path": path, **self._describe(path)}

    async def list_dir(self, path: str) -> dict[str, Any]:
        self._check_alive()
        path = normalize(path)
        if not self._is_dir(path):
            raise file_not_found(path)
        prefix = path.rstrip("/") + "/"
        names = {name[len(prefix):].split("/", 1)[0] for name in (*self.files, *self.dirs)
                 if name.startswith(prefix) and name != prefix}
        entries = [{"name": name, **self._describe(prefix + name)} for name in sorted(names)]
        return {"path": path, "entries": entries}

    async def mkdir(self, path: str) -> dict[str, Any]:
        self._check_alive()
        path = normalize(path)
        self._check_parents(path)
        if path in self.files:
            raise file_not_found(path)
        self.dirs.add(path)
        self._add_parents(path)
        return {"path": path}

    async def remove(self, path: str, *, recursive: bool = False) -> dict[str, Any]:
        self._check_alive()
        path = normalize(path)
        if path == "/":
            raise bad_request("/: cannot remove the root")
        if path in self.files:
            del self.files[path]
            self.modes.pop(path, None)
        elif self._is_dir(path):
            prefix = path + "/"
            inside = [name for name in (*self.files, *self.dirs) if name.startswith(prefix)]
            if inside and not recursive:
                raise conflict(f"{path}: directory not empty")
            for name in inside:
                self.files.pop(name, None)
                self.modes.pop(name, None)
                self.dirs.discard(name)
            self.dirs.discard(path)
        else:
            raise file_not_found(path)
        return {"path": path, "deleted": True}

    # --- interactive ---
    @asynccontextmanager
    async def pty(self, params: dict[str, Any]) -> AsyncIterator[FakeSocket]:
        """A terminal that echoes what it is sent (no shell behind it)."""
        self._check_alive()
        pty_id = "p-" + secrets.token_hex(6)
        self.open_ptys[pty_id] = {"id": pty_id, "pid": 2000 + len(self.open_ptys),
                                  "rows": int(params.get("rows", 24)), "cols": int(params.get("cols", 80))}
        socket = FakeSocket(lambda data: data)
        try:
            yield socket
        finally:
            self.open_ptys.pop(pty_id, None)
            await socket.close()

    async def ptys(self) -> list[dict[str, Any]]:
        self._check_alive()
        return [dict(info) for info in self.open_ptys.values()]

    async def resize_ptys(self, rows: int, cols: int) -> dict[str, Any]:
        self._check_alive()
        for info in self.open_ptys.values():
            info.update(rows=rows, cols=cols)
        return {"resized": list(self.open_ptys)}

    @asynccontextmanager
    async def relay(self, port: int) -> AsyncIterator[FakeSocket]:
        """A byte stream to `listeners[port]`; PortNotListening when nothing listens there."""
        self._check_alive()
        if not 1 <= port <= 65535:
            raise bad_request("port must be in 1..65535")
        if port not in self.listeners:
            raise agent_error(502, "port_not_listening", f"nothing listens on 127.0.0.1:{port}")
        socket = FakeSocket(self.listeners[port])
        try:
            yield socket
        finally:
            await socket.close()

    # --- disk consistency ---
    async def freeze(self) -> None:
        if not self.alive:
            raise errors.VMCrashed(self._exit_reason or "the VM stopped")
        self.frozen = True
        self.freeze_events.append("freeze")

    async def thaw(self) -> None:
        if not self.alive:
            raise errors.VMCrashed(self._exit_reason or "the VM stopped")
        if self.on_thaw is not None:
            self.on_thaw()
        self.frozen = False
        self.freeze_events.append("thaw")

    async def stop(self, *, graceful: bool = True) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.frozen = False
        self.graceful = graceful
        self._stopped_event.set()


class FakeRuntime:
    """A `chaser.runtime.Runtime` whose VMs are `FakeVM`s. Test hooks: `started` (every VM, in
    order), `fail_with` (raised by start), `hold_starts()`/`release_starts()` (starts wait
    until released; `starts_held` counts the waiting ones), `capacity_error` (raised by
    check_capacity, which counts its calls in `capacity_checks`), `warm_images`, `host_prepared`."""

    def __init__(self, *, network_mode: str = "isolated") -> None:
        self._network_mode = network_mode
        self.started: list[FakeVM] = []
        self.fail_with: Exception | None = None
        self._start_gate: asyncio.Event | None = None
        self.starts_held = 0
        self.capacity_error: Exception | None = None
        self.capacity_checks = 0
        self.warm_images: list[Path] = []
        self.host_prepared = 0
        self.saved: dict[Path, tuple[dict[str, bytes], set[str], dict[str, Any]]] = {}
        self.resumed: list[FakeVM] = []
        self.save_error: Exception | None = None  # raised by save (e.g. InsufficientStorage)
        self.resume_error: Exception | None = None  # raised by resume once the state is loaded (consumed)
        self.detached: list[FakeVM] = []  # what detach_all left running (CHASER_KEEP_VMS_ON_EXIT)
        # Restarts: what an earlier process left per session id (a VM to adopt, or why it is lost);
        # `unadopted`: the session ids finish_adoption found left over.
        self.left: dict[str, FakeVM | Exception] = {}
        self.unadopted: list[str] = []

    @property
    def network_mode(self) -> str:
        return self._network_mode

    @network_mode.setter
    def network_mode(self, mode: str) -> None:
        self._network_mode = mode

    @property
    def base_image_disk(self) -> Path:
        return BASE_IMAGE_DISK

    async def prepare_host(self) -> None:
        self.host_prepared += 1

    def warm_pool(self, image: Path) -> None:
        self.warm_images.append(image)

    def check_capacity(self) -> None:
        self.capacity_checks += 1
        if self.capacity_error is not None:
            raise self.capacity_error

    def hold_starts(self) -> None:
        """From now on, start() waits until release_starts() (call both on the app's event loop)."""
        self._start_gate = asyncio.Event()

    def release_starts(self) -> None:
        if self._start_gate is not None:
            self._start_gate.set()
            self._start_gate = None

    async def start(self, spec: VMSpec) -> FakeVM:
        if self._start_gate is not None:
            self.starts_held += 1
            try:
                await asyncio.wait_for(self._start_gate.wait(), HOLD_LIMIT_S)
            finally:
                self.starts_held -= 1
        if self.fail_with is not None:
            raise self.fail_with
        vm = FakeVM(spec)
        self.started.append(vm)
        return vm

    async def save(self, vm: FakeVM, directory: Path, *, keep_running: bool) -> Path:
        """Like the QEMU runtime's: meta.json written last; the VM's files and processes kept here."""
        if self.save_error is not None:
            raise self.save_error
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "memory.state").write_bytes(b"fake")
        (directory / "writable.img").write_bytes(b"")
        (directory / "meta.json").write_text(json.dumps({"compat": "fake"}))
        self.saved[directory] = (dict(vm.files), set(vm.dirs), dict(vm.procs))
        if not keep_running:
            await vm.stop(graceful=False)
        return directory / "writable.img"

    async def resume(self, spec: VMSpec, directory: Path, *, hostname: str | None = None,
                     consume: bool = False) -> FakeVM:
        self.check_saved(directory)
        if consume:
            (directory / "meta.json").unlink()
        if self.resume_error is not None:  # as a VM that loaded its state and then died
            raise self.resume_error
        files, dirs, procs = self.saved[directory]
        vm = FakeVM(spec)
        vm.files, vm.dirs, vm.procs = dict(files), set(dirs), dict(procs)
        vm.hostname = hostname or "sandbox"
        self.started.append(vm)
        self.resumed.append(vm)
        return vm

    def check_saved(self, directory: Path) -> None:
        if directory not in self.saved or not (directory / "meta.json").exists():
            raise errors.SnapshotIncompatible(f"no saved state in {directory}")
        if json.loads((directory / "meta.json").read_text()).get("compat") != "fake":
            raise errors.SnapshotIncompatible("made by another runtime")

    async def stop_all(self, *, graceful: bool = False) -> None:
        for vm in self.started:
            await vm.stop(graceful=graceful)

    async def adopt(self, session_id: str, *, network: EgressPolicy | None) -> FakeVM | None:
        """What `left` says an earlier process left for the session (a VM, or the error of a lost one)."""
        left = self.left.pop(session_id, None)
        if isinstance(left, Exception):
            raise left
        if left is not None:
            self.started.append(left)
        return left

    async def finish_adoption(self) -> None:
        self.unadopted = list(self.left)
        self.left = {}

    async def detach_all(self) -> None:
        self.detached = [vm for vm in self.started if not vm.stopped]
