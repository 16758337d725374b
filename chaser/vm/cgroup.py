"""One cgroup per VM with limits on memory, CPU and pids.

cgroup v2 where it is mounted with the controllers we need, else the v1
`memory`, `cpu` and `pids` hierarchies (this kind of machine mounts v1). The
QEMU child joins its cgroup before it execs, so nothing of it ever runs
outside. A VM killed by its memory limit is told apart from a crash by the
cgroup's `oom_kill` counter.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")
GROUP = "chaser"
V1_CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    vcpus: int
    pids: int


def detect(root: Path = ROOT) -> str | None:
    """'v2', 'v1' or None (no usable cgroups: VMs run unconfined, logged at start)."""
    controllers = root / "cgroup.controllers"
    if controllers.exists() and {"memory", "pids"} <= set(controllers.read_text().split()):
        return "v2"
    if all((root / c / "cgroup.procs").exists() for c in V1_CONTROLLERS):
        return "v1"
    return None


class VMCgroup:
    def __init__(self, name: str, *, version: str, root: Path = ROOT) -> None:
        self.name = name
        self.version = version
        self.root = root

    @property
    def dirs(self) -> list[Path]:
        if self.version == "v2":
            return [self.root / GROUP / self.name]
        return [self.root / c / GROUP / self.name for c in V1_CONTROLLERS]

    @property
    def procs_files(self) -> list[str]:
        """What the child writes its pid to before exec."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    def create(self, limits: Limits) -> None:
        if self.version == "v2":
            parent = self.root / GROUP
            parent.mkdir(exist_ok=True)
            for level in (self.root, parent):
                try:
                    (level / "cgroup.subtree_control").write_text("+memory +cpu +pids")
                except OSError as exc:  # e.g. cpu not delegated: memory and pids still apply
                    log.debug("cgroup: enabling controllers in %s: %s", level, exc)
        for directory in self.dirs:
            directory.mkdir(parents=True, exist_ok=True)
        quota = limits.vcpus * CPU_PERIOD_US
        if self.version == "v2":
            directory = self.dirs[0]
            _write(directory / "memory.max", str(limits.memory_bytes))
            _write(directory / "memory.swap.max", "0", required=False)
            _write(directory / "pids.max", str(limits.pids))
            _write(directory / "cpu.max", f"{quota} {CPU_PERIOD_US}", required=False)
        else:
            memory, cpu, pids = self.dirs
            _write(memory / "memory.limit_in_bytes", str(limits.memory_bytes))
            _write(memory / "memory.memsw.limit_in_bytes", str(limits.memory_bytes), required=False)
            _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(cpu / "cpu.cfs_quota_us", str(quota))
            _write(pids / "pids.max", str(limits.pids))

    def set_cpu_weight(self, weight: int) -> None:
        """The VM's share of contended CPU, in cgroup v2 units (1 to 10000, default 100; v1 `cpu.shares`
        is 1024 per 100). Best effort: without the cpu controller it changes nothing."""
        if self.version == "v2":
            _write(self.dirs[0] / "cpu.weight", str(weight), required=False)
        else:
            _write(self.dirs[1] / "cpu.shares", str(max(2, weight * 1024 // 100)), required=False)

    def oom_killed(self) -> bool:
        """Whether the memory limit killed a process of this cgroup."""
        if self.version == "v2":
            path, key = self.dirs[0] / "memory.events", "oom_kill"
        else:
            path, key = self.dirs[0] / "memory.oom_control", "oom_kill"
        try:
            for line in path.read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value) > 0
        except (OSError, ValueError):
            pass
        return False

    def read(self, filename: str) -> str | None:
        for directory in self.dirs:
            path = directory / filename
            if path.exists():
                try:
                    return path.read_text().strip()
                except OSError:
                    return None
        return None

    def remove(self) -> None:
        for directory in self.dirs:
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:  # still has a process: the reaper tries again later
                log.debug("cgroup %s not removed: %s", directory, exc)


def reap_empty(version: str | None, root: Path = ROOT) -> int:
    """Remove VM cgroups left by a dead server once their processes are gone."""
    if version is None:
        return 0
    parents = [root / GROUP] if version == "v2" else [root / c / GROUP for c in V1_CONTROLLERS]
    removed = 0
    for parent in parents:
        if not parent.is_dir():
            continue
        for child in parent.iterdir():
            if child.is_dir() and not (child / "cgroup.procs").read_text().strip():
                try:
                    child.rmdir()
                    removed += 1
                except OSError:
                    pass
    return removed


def _write(path: Path, value: str, *, required: bool = True) -> None:
    try:
        path.write_text(value)
    except OSError:
        if required:
            raise


def join_in_child(procs_files: list[str]) -> None:
    """In the child between fork and exec: move this process into the cgroup."""
    pid = str(os.getpid()).encode()
    for path in procs_files:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)
