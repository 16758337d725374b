"""The runtime seam over a real in-guest agent running on this host (no QEMU).

`AgentVM` implements `chaser.runtime.SandboxVM` with the host's agent client
(`chaser.vm.agent_client.AgentClient`), the way `chaser.vm.machine.VirtualMachine`
does minus QEMU: no crash detection, no freeze. `AgentRuntime` implements
`chaser.runtime.Runtime`, handing out AgentVMs over one agent process (the
`agent` fixture of tests/unit/conftest.py).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from chaser import errors
from chaser.agent.protocol import Endpoint
from chaser.runtime.egress import EgressPolicy
from chaser.runtime.interface import AgentSocket
from chaser.runtime.spec import VMSpec
from chaser.vm.agent_client import AgentClient


class AgentVM:
    """A SandboxVM whose agent is a process on this host, listening on 127.0.0.1:`port`."""

    def __init__(self, port: int, token: str, *, session_id: str = "") -> None:
        self._id = "host-" + secrets.token_hex(3)
        self.session_id = session_id
        self.agent = AgentClient(port, token)
        self._alive = True
        self._policy = EgressPolicy(internet=True)  # the host's network: nothing is enforced

    @property
    def id(self) -> str:
        return self._id

    @property
    def boot_method(self) -> str:
        return "host"

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def crashed(self) -> bool:
        return False

    @property
    def exit_reason(self) -> str | None:
        return None

    @property
    def end_reason(self) -> str:
        return "vm_crashed"

    @property
    def network_policy(self) -> EgressPolicy:
        return self._policy

    async def set_network_policy(self, policy: EgressPolicy) -> None:
        raise errors.InvalidRequest("the host agent has no network isolation", code="network_unavailable")

    def _check(self) -> None:
        if not self._alive:
            raise errors.VMCrashed("the VM stopped")

    # --- processes ---
    async def exec(self, command: str | list[str], *, cwd: str | None = None, env: dict[str, str] | None = None,
                   user: str | None = None, timeout_ms: int | None = None, max_output_bytes: int | None = None,
                   background: bool = False) -> dict[str, Any]:
        self._check()
        payload: dict[str, Any] = {"command": command, "background": background}
        for key, value in (("cwd", cwd), ("env", env), ("user", user), ("timeout_ms", timeout_ms),
                           ("max_output_bytes", max_output_bytes)):
            if value is not None:
                payload[key] = value
        return await self.agent.exec(payload)

    async def processes(self) -> list[dict[str, Any]]:
        self._check()
        return await self.agent.processes()

    async def process(self, process_id: str) -> dict[str, Any]:
        self._check()
        return await self.agent.process(process_id)

    async def output(self, process_id: str, *, offset: int = 0, limit: int | None = None,
                     wait_ms: int = 0) -> dict[str, Any]:
        self._check()
        return await self.agent.output(process_id, offset=offset, limit=limit, wait_ms=wait_ms)

    async def write_stdin(self, process_id: str, data: bytes, *, close: bool = False) -> dict[str, Any]:
        self._check()
        return await self.agent.write_stdin(process_id, data, close=close)

    async def signal(self, process_id: str, signal: str | int) -> dict[str, Any]:
        self._check()
        return await self.agent.signal(process_id, signal)

    async def selftest(self) -> dict[str, Any]:
        self._check()
        return await self.agent.selftest()

    # --- files ---
    async def write_file(self, path: str, content: bytes | AsyncIterator[bytes], *,
                         mode: str | None = None) -> dict[str, Any]:
        self._check()
        return await self.agent.write_file(path, content, mode=mode)

    async def stream_file(self, path: str) -> AsyncIterator[bytes]:
        self._check()
        async for chunk in self.agent.stream_file(path):
            yield chunk

    async def stat(self, path: str) -> dict[str, Any]:
        self._check()
        return await self.agent.stat(path)

    async def list_dir(self, path: str) -> dict[str, Any]:
        self._check()
        return await self.agent.list_dir(path)

    async def mkdir(self, path: str) -> dict[str, Any]:
        self._check()
        return await self.agent.mkdir(path)

    async def remove(self, path: str, *, recursive: bool = False) -> dict[str, Any]:
        self._check()
        return await self.agent.remove(path, recursive=recursive)

    # --- interactive ---
    def pty(self, params: dict[str, Any]) -> AbstractAsyncContextManager[AgentSocket]:
        return self.agent.websocket(Endpoint.PTY, params)

    async def ptys(self) -> list[dict[str, Any]]:
        self._check()
        return await self.agent.ptys()

    async def resize_ptys(self, rows: int, cols: int) -> dict[str, Any]:
        self._check()
        return await self.agent.resize_ptys(rows, cols)

    def relay(self, port: int) -> AbstractAsyncContextManager[AgentSocket]:
        return self.agent.websocket(Endpoint.RELAY, {"port": port})

    # --- disk consistency: a host process has no vCPUs to pause ---
    async def freeze(self) -> None:
        raise errors.FeatureNotImplemented("the host agent cannot be frozen")

    async def thaw(self) -> None:
        raise errors.FeatureNotImplemented("the host agent cannot be frozen")

    async def stop(self, *, graceful: bool = True) -> None:
        """Ends this VM's use of the agent (the agent process belongs to its fixture)."""
        if self._alive:
            self._alive = False
            await self.agent.close()


class AgentRuntime:
    """A Runtime whose every VM is an AgentVM over the one agent process `agent_proc`
    (anything with `port` and `token`, e.g. tests/unit/conftest.py's AgentProcess)."""

    def __init__(self, agent_proc: Any) -> None:
        self.agent_proc = agent_proc
        self.started: list[AgentVM] = []

    @property
    def network_mode(self) -> str:
        return "none"

    @property
    def base_image_disk(self) -> Path:
        return Path("/nonexistent/base.erofs")

    async def prepare_host(self) -> None:
        return None

    def warm_pool(self, image: Path) -> None:
        return None

    def check_capacity(self) -> None:
        return None

    async def start(self, spec: VMSpec) -> AgentVM:
        vm = AgentVM(self.agent_proc.port, self.agent_proc.token, session_id=spec.session_id)
        self.started.append(vm)
        return vm

    async def save(self, vm: Any, directory: Path, *, keep_running: bool) -> Path:
        raise errors.FeatureNotImplemented("one agent process has no VM state to save")

    async def resume(self, spec: VMSpec, directory: Path, *, hostname: str | None = None,
                     consume: bool = False) -> AgentVM:
        raise errors.FeatureNotImplemented("one agent process has no VM state to resume")

    def check_saved(self, directory: Path) -> None:
        raise errors.SnapshotIncompatible("one agent process has no VM state")

    async def stop_all(self, *, graceful: bool = False) -> None:
        for vm in self.started:
            await vm.stop(graceful=graceful)

    async def adopt(self, session_id: str, *, network: EgressPolicy | None) -> None:
        return None  # an agent process is not left for another runtime

    async def finish_adoption(self) -> None:
        pass

    async def detach_all(self) -> None:
        await self.stop_all()
