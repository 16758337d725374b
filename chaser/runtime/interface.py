"""The runtime seam: what the service layer may ask of whatever runs the VMs.

`chaser/vm` implements it with QEMU on this machine; the test fakes implement it
in memory. (Scale-out does not cross this seam: an API replica routes requests to the
`chaser node` that runs the VM, docs/architecture.md "Several nodes".) The service
layer imports only this package, never `chaser.vm`.

Every call on a `SandboxVM` fails with `errors.VMCrashed` as soon as the VM
dies under it, and with the agent's own errors (`FileNotFound`,
`PortNotListening`, ...) as the agent answers them. Results are the agent's
JSON objects, documented in docs/agent-protocol.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from chaser.runtime.egress import EgressPolicy
from chaser.runtime.spec import VMSpec

NetworkMode = Literal["isolated", "none", "slirp"]
# Modes in which a policy is recorded but nothing enforces it.
UNENFORCED_MODES: tuple[str, ...] = ("none", "slirp")
BootPath = Literal["pool", "template", "cold"]


class AgentSocket(Protocol):
    """A WebSocket to the agent (PTY, relay): text frames carry control
    messages, binary frames carry bytes; `recv` raises
    `websockets.exceptions.ConnectionClosed` once it ends."""

    async def send(self, message: str | bytes) -> None: ...
    async def recv(self) -> str | bytes: ...
    async def close(self) -> None: ...


@runtime_checkable
class SandboxVM(Protocol):
    """One running microVM that belongs to one session."""

    @property
    def id(self) -> str: ...
    @property
    def boot_method(self) -> str: ...
    @property
    def alive(self) -> bool: ...
    @property
    def crashed(self) -> bool:
        """QEMU ended without being asked to."""
        ...
    @property
    def exit_reason(self) -> str | None: ...
    @property
    def end_reason(self) -> str:
        """`vm_crashed`, or `vm_oom` when its memory limit killed it."""
        ...
    @property
    def network_policy(self) -> EgressPolicy: ...

    async def set_network_policy(self, policy: EgressPolicy) -> None: ...

    # --- processes ---
    async def exec(self, command: str | list[str], *, cwd: str | None = None, env: dict[str, str] | None = None,
                   user: str | None = None, timeout_ms: int | None = None, max_output_bytes: int | None = None,
                   background: bool = False) -> dict[str, Any]: ...
    async def processes(self) -> list[dict[str, Any]]: ...
    async def process(self, process_id: str) -> dict[str, Any]: ...
    async def output(self, process_id: str, *, offset: int = 0, limit: int | None = None,
                     wait_ms: int = 0) -> dict[str, Any]: ...
    async def write_stdin(self, process_id: str, data: bytes, *, close: bool = False) -> dict[str, Any]: ...
    async def signal(self, process_id: str, signal: str | int) -> dict[str, Any]: ...
    async def selftest(self) -> dict[str, Any]: ...

    # --- files ---
    async def write_file(self, path: str, content: bytes | AsyncIterator[bytes], *,
                         mode: str | None = None) -> dict[str, Any]: ...
    def stream_file(self, path: str) -> AsyncIterator[bytes]: ...
    async def stat(self, path: str) -> dict[str, Any]: ...
    async def list_dir(self, path: str) -> dict[str, Any]: ...
    async def mkdir(self, path: str) -> dict[str, Any]: ...
    async def remove(self, path: str, *, recursive: bool = False) -> dict[str, Any]: ...

    # --- interactive ---
    def pty(self, params: dict[str, Any]) -> AbstractAsyncContextManager[AgentSocket]:
        """A PTY WebSocket (docs/pty-and-forwarding.md); `params` is its query (mode, rows, cols, ...)."""
        ...
    async def ptys(self) -> list[dict[str, Any]]: ...
    async def resize_ptys(self, rows: int, cols: int) -> dict[str, Any]: ...
    def relay(self, port: int) -> AbstractAsyncContextManager[AgentSocket]:
        """A byte stream to 127.0.0.1:`port` inside the guest; PortNotListening if closed."""
        ...

    # --- disk consistency ---
    async def freeze(self) -> None:
        """Pause the vCPUs and drain the disk I/O (the caller has synced the guest)."""
        ...
    async def thaw(self) -> None: ...

    async def stop(self, *, graceful: bool = True) -> None:
        """Graceful: the guest flushes and unmounts first. Idempotent."""
        ...


@runtime_checkable
class Runtime(Protocol):
    """Starts and tracks the VMs of one machine."""

    @property
    def network_mode(self) -> NetworkMode:
        """What `CHASER_NETWORK` resolved to on this machine."""
        ...
    @property
    def base_image_disk(self) -> Path:
        """The guest builder's root file system: the default image until one is imported."""
        ...

    async def prepare_host(self) -> None:
        """Host set-up before the first VM (network tables, leftovers of a killed server)."""
        ...
    def check_capacity(self) -> None:
        """Raise `errors.CapacityExhausted` when one more session VM would not fit."""
        ...
    async def start(self, spec: VMSpec) -> SandboxVM: ...
    def warm_pool(self, image: Path) -> None:
        """Keep VMs of `image` ready for plain ephemeral sessions."""
        ...

    # --- pause, resume, fork (docs/pause-and-fork.md) ---
    async def save(self, vm: SandboxVM, directory: Path, *, keep_running: bool) -> Path:
        """Save the VM's memory, devices and writable disk under `directory` (written last:
        its meta file). keep_running=False ends the VM after (pause); True lets it go on
        (fork). Any failure leaves the VM running: `errors.InsufficientStorage` when the
        disk is too full. Returns where the saved disk copy is (ephemeral disks and forks)."""
        ...
    async def resume(self, spec: VMSpec, directory: Path, *, hostname: str | None = None,
                     consume: bool = False) -> SandboxVM:
        """A running VM from the state saved in `directory`, on `spec.writable_disk`, with
        a new token, clock and entropy (and a new `hostname`, for a fork); `spec.image_disk`
        is ignored (the state names its image). `consume` (a pause's state): its meta file
        goes before the VM runs again, so it is never resumed twice; else (a fork's) it stays."""
        ...
    def check_saved(self, directory: Path) -> None:
        """`errors.SnapshotIncompatible` unless `directory` holds a state this runtime resumes."""
        ...
    async def stop_all(self, *, graceful: bool = False) -> None: ...

    # --- restarts that keep VMs (docs/operations.md, "What survives what") ---
    async def adopt(self, session_id: str, *, network: EgressPolicy | None) -> SandboxVM | None:
        """The VM an earlier server process left running for `session_id`, now this one's;
        None when it left none; `errors.VMCrashed` when it left one that is lost."""
        ...
    async def finish_adoption(self) -> None:
        """After every session had its chance to adopt: remove the VMs left that nobody adopted."""
        ...
    async def detach_all(self) -> None:
        """The server exits: its sessions' VMs run on, for the next server to adopt."""
        ...


__all__ = [
    "UNENFORCED_MODES",
    "AgentSocket",
    "BootPath",
    "EgressPolicy",
    "NetworkMode",
    "Runtime",
    "SandboxVM",
    "VMSpec",
]
