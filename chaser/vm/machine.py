"""A running microVM: its QEMU process, QMP connection and agent client."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import QMPClient

from chaser import errors
from chaser.agent.protocol import Endpoint
from chaser.runtime.egress import EgressPolicy
from chaser.runtime.interface import AgentSocket
from chaser.vm.agent_client import AgentClient
from chaser.vm.cgroup import VMCgroup
from chaser.vm.console import ConsoleLog
from chaser.vm.network.manager import SandboxNetwork
from chaser.vm.process import QemuProcess, kill_process_group
from chaser.vm.template import Template

log = logging.getLogger(__name__)
T = TypeVar("T")


class VirtualMachine:
    def __init__(
        self,
        *,
        vm_id: str,
        vm_dir: Path,
        process: QemuProcess,
        qmp: QMPClient,
        agent: AgentClient,
        on_stopped: Callable[[VirtualMachine], None] | None = None,
        network: SandboxNetwork | None = None,
        cgroup: VMCgroup | None = None,
        console: ConsoleLog | None = None,
    ) -> None:
        self.id = vm_id
        self.dir = vm_dir
        self.qemu = process  # the QEMU process (`process()` is the agent call)
        self.qmp = qmp
        self.agent = agent
        self.network = network  # None: no namespace (CHASER_NETWORK=none or slirp)
        self.cgroup = cgroup
        self.console = console
        self.session_id = ""
        self.boot_method = "cold"
        self.pooled = False  # taken ready-made from the warm pool
        self.call_finished = asyncio.Event()  # set as each agent call ends (the warm pool waits for one)
        self.boot_ms = 0.0
        self.started_at = time.time()
        self._on_stopped = on_stopped
        self._stopping = False
        self._stop_task: asyncio.Future[None] | None = None
        self.exit_reason: str | None = None
        self._oom = False
        self.writable_disk: Path | None = None  # set by the runtime; admission counts its growth
        self.image_disk: Path | None = None  # set by the runtime: a saved state names it
        # "mem": RAM under the memory backend id=mem (a private mapping of the template's RAM, or
        # anonymous RAM after a resume); "builtin": QEMU's own (a cold boot). A saved state's
        # stream names the block: a resume must have the same one.
        self.ram_block = "builtin"
        # The template whose RAM the "mem" block maps (a restore, a filtered resume): a save
        # drops the pages that equal its pages (chaser/vm/suspend.py). None: none does.
        self.template: Template | None = None
        self.disk_quota_bytes = 0
        self._exited = asyncio.ensure_future(process.wait())
        self._exited.add_done_callback(self._note_exit)

    @property
    def pid(self) -> int:
        return self.qemu.pid

    @property
    def alive(self) -> bool:
        return not self._exited.done()

    @property
    def crashed(self) -> bool:
        return self._exited.done() and not self._stopping

    def disk_growth_bytes(self) -> int:
        """How much more the writable disk may take on the host (quota minus allocated)."""
        if self.writable_disk is None:
            return 0
        try:
            allocated = os.stat(self.writable_disk).st_blocks * 512
        except OSError:
            return 0
        return max(0, self.disk_quota_bytes - allocated)

    def set_cpu_weight(self, weight: int) -> None:
        """Its share of contended CPU (chaser/vm/cgroup.py); the warm pool lowers it while a VM waits."""
        if self.cgroup is not None:
            self.cgroup.set_cpu_weight(weight)

    @property
    def oom_killed(self) -> bool:
        """The VM was killed by its cgroup's memory limit."""
        return self.cgroup is not None and self.cgroup.oom_killed()

    @property
    def end_reason(self) -> str:
        """What ended the session when QEMU died on its own."""
        return "vm_oom" if self._oom else "vm_crashed"

    @property
    def network_policy(self) -> EgressPolicy:
        if self.network is None or self.network.policy is None:
            return EgressPolicy(internet=False)
        return self.network.policy

    async def apply_network(self, policy: EgressPolicy) -> None:
        """Install `policy` when this VM has a namespace (no-op without one)."""
        if self.network is not None:
            await self.network.apply(policy)

    async def set_network_policy(self, policy: EgressPolicy) -> None:
        """Change the egress policy of the running VM; new connections follow it at once."""
        if self.network is None:
            raise errors.InvalidRequest(
                "this server runs without network isolation (CHASER_NETWORK=none or slirp): "
                "a sandbox's network policy cannot be changed", code="network_unavailable")
        if not self.alive:
            raise errors.VMCrashed(self.exit_reason or "the VM is not running")
        await self.network.apply(policy)

    def _note_exit(self, future: asyncio.Future[int]) -> None:
        if not self._stopping and not future.cancelled():
            self._oom = self.oom_killed  # read now: the cgroup goes with stop()
            if self._oom:
                self.exit_reason = "the VM used more memory than its limit and was killed (vm_oom)"
            else:
                code = self.qemu.returncode  # None: an adopted QEMU (not our child)
                self.exit_reason = "QEMU exited unexpectedly" + (f" (code {code})" if code is not None else "")
            log.warning("VM %s: %s", self.id, self.exit_reason)

    async def wait_exit(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(asyncio.shield(self._exited), timeout)
            return True
        except TimeoutError:
            return False

    async def guard(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable`, but fail with VMCrashed as soon as QEMU dies."""
        if not self.alive:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise errors.VMCrashed(self.exit_reason or "the VM is not running")
        task = asyncio.ensure_future(awaitable)
        task.add_done_callback(lambda _: self.call_finished.set())
        try:
            done, _ = await asyncio.wait({task, self._exited}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # The caller gave up (a warm pool closing mid-/prepare): so does the call, and how it
            # ended is nobody's ("Task exception was never retrieved" otherwise).
            task.cancel()
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            raise
        if task in done:
            try:
                return task.result()
            except errors.AgentUnavailable:
                # The connection usually drops a moment before QEMU is reaped
                # (tearing down its memory takes a while on a loaded host).
                if await self.wait_exit(3.0):
                    raise errors.VMCrashed(self.exit_reason or "the VM stopped") from None
                raise
        task.cancel()
        # It may have failed in the same instant (the connection dropped with the VM): that is this crash.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        raise errors.VMCrashed(self.exit_reason or "the VM stopped")

    async def exec(
        self,
        command: str | list[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
        timeout_ms: int | None = None,
        max_output_bytes: int | None = None,
        background: bool = False,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"command": command, "background": background}
        for key, value in (
            ("cwd", cwd), ("env", env), ("user", user),
            ("timeout_ms", timeout_ms), ("max_output_bytes", max_output_bytes),
        ):
            if value is not None:
                payload[key] = value
        return await self.guard(self.agent.exec(payload))

    async def processes(self) -> list[dict[str, Any]]:
        return await self.guard(self.agent.processes())

    async def process(self, process_id: str) -> dict[str, Any]:
        return await self.guard(self.agent.process(process_id))

    async def output(self, process_id: str, *, offset: int = 0, limit: int | None = None,
                     wait_ms: int = 0) -> dict[str, Any]:
        return await self.guard(self.agent.output(process_id, offset=offset, limit=limit, wait_ms=wait_ms))

    async def write_stdin(self, process_id: str, data: bytes, *, close: bool = False) -> dict[str, Any]:
        return await self.guard(self.agent.write_stdin(process_id, data, close=close))

    async def signal(self, process_id: str, signal: str | int) -> dict[str, Any]:
        return await self.guard(self.agent.signal(process_id, signal))

    async def selftest(self) -> dict[str, Any]:
        return await self.guard(self.agent.selftest())

    async def prepare(self, disks: dict[str, str]) -> dict[str, Any]:
        return await self.guard(self.agent.prepare(disks))

    async def init(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await self.guard(self.agent.init(payload))

    # --- files ---
    async def write_file(self, path: str, content: bytes | AsyncIterator[bytes], *,
                         mode: str | None = None) -> dict[str, Any]:
        return await self.guard(self.agent.write_file(path, content, mode=mode))

    async def stream_file(self, path: str) -> AsyncIterator[bytes]:
        """The file's bytes as they arrive (a crash mid-stream ends it with VMCrashed)."""
        chunks = self.agent.stream_file(path)
        while True:
            try:
                chunk = await self.guard(chunks.__anext__())
            except StopAsyncIteration:
                return
            yield chunk

    async def stat(self, path: str) -> dict[str, Any]:
        return await self.guard(self.agent.stat(path))

    async def list_dir(self, path: str) -> dict[str, Any]:
        return await self.guard(self.agent.list_dir(path))

    async def mkdir(self, path: str) -> dict[str, Any]:
        return await self.guard(self.agent.mkdir(path))

    async def remove(self, path: str, *, recursive: bool = False) -> dict[str, Any]:
        return await self.guard(self.agent.remove(path, recursive=recursive))

    # --- interactive ---
    def pty(self, params: dict[str, Any]) -> AbstractAsyncContextManager[AgentSocket]:
        return self.agent.websocket(Endpoint.PTY, params)

    async def ptys(self) -> list[dict[str, Any]]:
        return await self.guard(self.agent.ptys())

    async def resize_ptys(self, rows: int, cols: int) -> dict[str, Any]:
        return await self.guard(self.agent.resize_ptys(rows, cols))

    def relay(self, port: int) -> AbstractAsyncContextManager[AgentSocket]:
        return self.agent.websocket(Endpoint.RELAY, {"port": port})

    # --- disk consistency ---
    async def freeze(self) -> None:
        await self.guard(self.qmp.execute("stop"))

    async def thaw(self) -> None:
        await self.guard(self.qmp.execute("cont"))

    async def stop(self, *, graceful: bool = True, timeout: float = 15.0) -> None:
        """Agent shutdown (flushes disks), then QMP quit, then SIGKILL; then
        delete everything the VM had on disk except disks owned by the caller.
        Concurrent calls share one stop."""
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop(graceful=graceful, timeout=timeout))
        await asyncio.shield(self._stop_task)

    async def _stop(self, *, graceful: bool, timeout: float) -> None:
        self._stopping = True
        try:
            if graceful and self.alive:
                try:
                    await asyncio.wait_for(self.agent.shutdown(), 5.0)
                    await self.wait_exit(timeout)
                except (TimeoutError, errors.ChaserError):
                    pass
            if self.alive:
                try:
                    await asyncio.wait_for(self.qmp.execute("quit"), 3.0)
                except Exception:  # noqa: BLE001 - QMP may already be gone
                    pass
                await self.wait_exit(3.0)
            if self.alive:
                kill_process_group(self.qemu.pid)
                await self.wait_exit(10.0)
        finally:
            kill_process_group(self.qemu.pid)
            await self._close_connections()
            if self.console is not None:
                await self.console.close()
            if self.network is not None:
                await self.network.release()
            if self.cgroup is not None:
                self.cgroup.remove()
            await asyncio.to_thread(shutil.rmtree, self.dir, ignore_errors=True)  # not on the event loop
            if self._on_stopped:
                self._on_stopped(self)

    async def detach(self) -> None:
        """The server exits and leaves the VM running for the next one to adopt (chaser/vm/adopt.py):
        connections and the resolver go; QEMU, its namespace, cgroup and directory stay."""
        self._stopping = True
        self._exited.cancel()
        await self._close_connections()
        if self.console is not None:
            await self.console.close()
        if self.network is not None:
            await self.network.detach()
        if self._on_stopped:
            self._on_stopped(self)

    async def _close_connections(self) -> None:
        try:
            await asyncio.wait_for(self.qmp.disconnect(), 2.0)
        except Exception:  # noqa: BLE001
            pass
        await self.agent.close()
