"""The jailed VMM: what a QEMU may touch and who it runs as.

A jailed QEMU runs as an unprivileged uid of its own (one per VM slot, so two
QEMUs never share a uid and cannot read each other's memory or files through
/proc), under a seccomp filter, in its network namespace and cgroup. It opens
no file of ours by path: the runtime opens each one and passes the descriptor
(`PassedFiles`), so the data directory can stay private to the server and the
template's RAM is a sealed memfd that no QEMU can write (chaser/vm/memory.py).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from chaser.config import Settings


@dataclass(frozen=True)
class JailUser:
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


def jail_user_for(settings: Settings, slot: int) -> JailUser | None:
    """The uid for VM slot `slot` (None: QEMU keeps root; CHASER_JAIL=false)."""
    if not settings.jail or os.geteuid() != 0:
        return None
    uid = settings.jail_uid_base + slot
    groups: tuple[int, ...] = ()
    try:  # KVM hosts give /dev/kvm to a group (usually `kvm`): keep that one
        kvm = os.stat("/dev/kvm")
        if kvm.st_mode & 0o060 == 0o060:
            groups = (kvm.st_gid,)
    except OSError:
        pass
    return JailUser(uid=uid, gid=uid, groups=groups)


@dataclass
class PassedFiles:
    """Descriptors opened by the runtime for one QEMU, and how QEMU names them.

    `fd_path()` gives `/proc/self/fd/N` for a descriptor the caller made, a sealed
    memfd (QEMU re-opens it, and a re-open checks the file's own mode, so a 0600
    file of ours would not do). `fdset()` gives
    `/dev/fdset/N` for disks: QEMU's block layer re-opens a disk (e.g. on `cont`
    after a restore) by duplicating our descriptor, so even a disk file that
    QEMU's uid could not open works."""

    fds: list[int] = field(default_factory=list)
    _sets: list[tuple[int, int]] = field(default_factory=list)

    def fd_path(self, fd: int) -> Path:
        """A descriptor the caller owns (e.g. a memfd), passed on as a path."""
        self.fds.append(fd)
        return Path(f"/proc/self/fd/{fd}")

    def fdset(self, file: Path, *, writable: bool) -> Path:
        """A set holds one descriptor per access mode QEMU may ask for (it
        matches them exactly and probes a writable disk read-only first)."""
        set_id = len({s for _, s in self._sets}) + 1
        for flags in (os.O_RDONLY, os.O_RDWR) if writable else (os.O_RDONLY,):
            fd = os.open(file, flags | os.O_CLOEXEC)
            self._sets.append((fd, set_id))
        return Path(f"/dev/fdset/{set_id}")

    def listening_socket(self, path: Path) -> int:
        """A Unix socket bound and listening at `path` (QMP), passed as its fd."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            sock.listen(4)
        except BaseException:
            sock.close()
            raise
        fd = sock.detach()
        self.fds.append(fd)
        return fd

    def qemu_args(self) -> list[str]:
        args: list[str] = []
        for fd, set_id in self._sets:
            args += ["-add-fd", f"fd={fd},set={set_id}"]
        return args

    @property
    def all_fds(self) -> list[int]:
        return self.fds + [fd for fd, _ in self._sets]

    def close(self, *, keep: tuple[int, ...] = ()) -> None:
        """Close our copies once QEMU has them (`keep`: fds owned elsewhere)."""
        for fd in self.all_fds:
            if fd not in keep:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fds.clear()
        self._sets.clear()

    def _open(self, file: Path, flags: int) -> int:
        fd = os.open(file, flags | os.O_CLOEXEC)
        self.fds.append(fd)
        return fd
