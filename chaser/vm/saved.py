"""Saved VM state: what a pause or a fork writes, and what a resume loads.

A saved state is a directory:

    memory.state   QEMU's migration stream of the stopped VM: RAM and device state,
                   without the pages the template has (chaser/vm/stream_filter.py)
    writable.img   the writable disk at that instant (ephemeral sessions and forks;
                   a workspace's disk stays where it is)
    meta.json      written last (fsync, rename): a directory without it is a save
                   that did not finish and is never resumed

The state is bound to what made it (`compat`: guest assets, agent protocol, QEMU,
memory, vCPUs, accelerator, network backend): a resume under anything else is
`409 snapshot_incompatible`. docs/pause-and-fork.md has the whole story.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from chaser import errors
from chaser.diskcopy import copy_disk
from chaser.vm.launcher import pass_fd

# Migration skips RAM that lives in a shared file (the template's): set alike on both ends of every stream.
IGNORE_SHARED = {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}
STATE_FORMAT = 1  # bump when the layout or the way states are made changes
# Room kept free on the disk beyond what a save needs, so a full disk never fails the host.
RESERVE_BYTES = 256 * 1024 * 1024
MIGRATION_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class SavedState:
    dir: Path

    @property
    def memory_file(self) -> Path:
        return self.dir / "memory.state"

    @property
    def whole_stream(self) -> Path:
        """QEMU's stream as it wrote it, before the template's pages are dropped."""
        return self.dir / "memory.whole"

    @property
    def partial_stream(self) -> Path:
        return self.dir / "memory.state.partial"

    @property
    def disk_file(self) -> Path:
        return self.dir / "writable.img"

    @property
    def meta_file(self) -> Path:
        return self.dir / "meta.json"

    @property
    def complete(self) -> bool:
        return self.meta_file.exists() and self.memory_file.exists()

    def meta(self) -> dict[str, Any]:
        try:
            data = json.loads(self.meta_file.read_text())
        except (OSError, ValueError) as exc:
            raise errors.SnapshotIncompatible(f"the saved state in {self.dir.name} is unreadable: {exc}") from None
        if not isinstance(data, dict):
            raise errors.SnapshotIncompatible(f"the saved state in {self.dir.name} is unreadable")
        return data

    def size_bytes(self) -> int:
        total = 0
        for path in (self.memory_file, self.disk_file):
            try:
                total += os.stat(path).st_blocks * 512
            except OSError:
                pass
        return total


def check_room(directory: Path, needed: int) -> None:
    """507 before anything stops, when the disk cannot take the save."""
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < needed + RESERVE_BYTES:
        raise errors.InsufficientStorage(
            f"saving needs about {(needed + RESERVE_BYTES) >> 20} MiB on the host's disk and "
            f"{free >> 20} MiB are free; nothing was changed, the session keeps running")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)
    _fsync_dir(path.parent)


def link_or_copy(source: Path, target: Path) -> None:
    """Keep `source` (a VM directory's disk, which goes with the VM) under `target` too."""
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        copy_disk(source, target)


async def migrate_to_file(qmp: QMPClient, path: Path) -> None:
    """The stopped VM's migration stream into `path`, fsynced. ENOSPC → InsufficientStorage."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as out:  # noqa: ASYNC230 - opened to pass its descriptor
        await pass_fd(qmp, out.fileno(), "saved-state")
        await qmp.execute("migrate", {"uri": "fd:saved-state"})
        await wait_migration(qmp, what="saving the VM state")
        await asyncio.to_thread(os.fsync, out.fileno())
    os.replace(partial, path)


async def wait_migration(qmp: QMPClient, *, what: str) -> None:
    deadline = time.monotonic() + MIGRATION_TIMEOUT_S
    while True:
        answer = await qmp.execute("query-migrate")
        status = answer.get("status") if isinstance(answer, dict) else None
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            detail = str(answer.get("error-desc", status)) if isinstance(answer, dict) else str(status)
            if "No space left" in detail or "ENOSPC" in detail:
                raise errors.InsufficientStorage(
                    f"{what} failed: the host's disk is full ({detail}); nothing was lost")
            raise errors.SandboxRuntimeError(f"{what} failed: {detail}")
        if time.monotonic() > deadline:
            raise errors.SandboxRuntimeError(f"{what} did not finish in {MIGRATION_TIMEOUT_S:.0f}s")
        await asyncio.sleep(0.02)


def write_meta(state: SavedState, meta: dict[str, Any]) -> None:
    _write_durably(state.meta_file, json.dumps(meta).encode())


def discard(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
