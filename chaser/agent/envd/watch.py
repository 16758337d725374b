"""Directory watchers with inotify (ctypes: the guest has no inotify module), for
envd's `WatchDir` stream and its polling `CreateWatcher`/`GetWatcherEvents`."""

import asyncio
import ctypes
import errno
import os
import posixpath
import struct

from ..safepath import Root
from ..sandbox import libc
from .connect import RpcError

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_ISDIR = 0x400, 0x40000000
MASK = IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
EVENT = struct.Struct("iIII")



def _event_type(mask: int) -> str | None:
    if mask & (IN_CREATE | IN_MOVED_TO):
        return "EVENT_TYPE_CREATE"
    if mask & IN_MOVED_FROM:
        return "EVENT_TYPE_RENAME"
    if mask & IN_DELETE:
        return "EVENT_TYPE_REMOVE"
    if mask & IN_MODIFY:
        return "EVENT_TYPE_WRITE"
    if mask & IN_ATTRIB:
        return "EVENT_TYPE_CHMOD"
    return None


class Watcher:
    """Events under one directory (and its subdirectories when `recursive`), names
    relative to it. `buffered`: keep up to that many for `drain` (the polling API)."""

    def __init__(self, root_dir: str, path: str, recursive: bool, buffered: int | None = None):
        self.root_dir, self.path, self.recursive, self.buffered = root_dir, path, recursive, buffered
        self.fd = libc().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise RpcError("internal", f"inotify_init1: {os.strerror(ctypes.get_errno())}")
        self.dirs: dict = {}  # wd -> path relative to the watched directory
        self.pending: list = []
        self.changed = asyncio.Event()
        try:
            with Root(root_dir) as root:
                self._add(root, "")
        except BaseException:
            os.close(self.fd)
            raise
        asyncio.get_running_loop().add_reader(self.fd, self._read)

    def _add(self, root: Root, rel: str) -> None:
        full = posixpath.join(self.path, rel) if rel else self.path
        try:
            dfd = root.open(full, os.O_PATH | os.O_DIRECTORY)
        except OSError as e:
            if not rel:
                code = "not_found" if e.errno in (errno.ENOENT, errno.ENOTDIR) else "invalid_argument"
                raise RpcError(code, f"{full}: {e.strerror}") from None
            return
        try:
            wd = libc().inotify_add_watch(self.fd, f"/proc/self/fd/{dfd}".encode(), MASK)
            if wd >= 0:
                self.dirs[wd] = rel
            if self.recursive:
                fd = root.open(full, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    with os.scandir(fd) as it:
                        subdirs = [e.name for e in it if e.is_dir(follow_symlinks=False)]
                finally:
                    os.close(fd)
                for name in subdirs:
                    self._add(root, posixpath.join(rel, name) if rel else name)
        finally:
            os.close(dfd)

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            return
        offset = 0
        while offset + EVENT.size <= len(data):
            wd, mask, _cookie, length = EVENT.unpack_from(data, offset)
            name = data[offset + EVENT.size:offset + EVENT.size + length].rstrip(b"\0").decode(errors="replace")
            offset += EVENT.size + length
            base = self.dirs.get(wd)
            kind = _event_type(mask)
            if base is None or kind is None or not name:
                continue
            rel = posixpath.join(base, name) if base else name
            if self.recursive and mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                with Root(self.root_dir) as root:
                    self._add(root, rel)
            if self.buffered is None or len(self.pending) < self.buffered:
                self.pending.append({"name": rel, "type": kind})
        self.changed.set()

    async def next_events(self) -> list:
        while not self.pending:
            self.changed.clear()
            await self.changed.wait()
        return self.drain()

    def drain(self) -> list:
        events, self.pending = self.pending, []
        return events

    def close(self) -> None:
        if self.fd >= 0:
            try:
                asyncio.get_running_loop().remove_reader(self.fd)
            except RuntimeError:
                pass
            os.close(self.fd)
            self.fd = -1
