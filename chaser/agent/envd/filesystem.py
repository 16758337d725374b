"""envd's `filesystem.Filesystem` service. Every path is resolved inside the sandbox
root (safepath: openat2 RESOLVE_IN_ROOT); relative paths against the user's home."""

import asyncio
import errno
import os
import posixpath
import secrets
import stat as st
from datetime import UTC, datetime

from ..files import _os_error, remove_at
from ..safepath import Root, read_text
from .connect import RpcError

FILE_TYPES = {"file": "FILE_TYPE_FILE", "dir": "FILE_TYPE_DIRECTORY", "symlink": "FILE_TYPE_SYMLINK"}
MAX_WATCHER_EVENTS = 10000


def fs_error(e: OSError, path: str) -> RpcError:
    if e.errno == errno.EEXIST:
        return RpcError("already_exists", f"{path} already exists")
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
        return RpcError("not_found", f"{path}: no such file or directory")
    error = _os_error(e, path)
    return RpcError({400: "invalid_argument", 403: "permission_denied", 409: "failed_precondition"}.get(
        error.status, "internal"), error.message)


def _names(root_dir: str, path: str) -> dict:
    names: dict[int, str] = {}
    for line in (read_text(root_dir, path) or "").splitlines():
        parts = line.split(":")
        if len(parts) > 2 and parts[2].isdigit():
            names.setdefault(int(parts[2]), parts[0])
    return names


def _permissions(mode: int) -> str:
    kind = "d" if st.S_ISDIR(mode) else "L" if st.S_ISLNK(mode) else "-"
    bits = "".join(ch if mode & (1 << (8 - i)) else "-" for i, ch in enumerate("rwxrwxrwx"))
    return kind + bits


class Entries:
    """EntryInfo messages, with the sandbox's user and group names."""

    def __init__(self, root: Root, root_dir: str):
        self.root = root
        self.users = _names(root_dir, "/etc/passwd")
        self.groups = _names(root_dir, "/etc/group")

    def lstat(self, path: str) -> os.stat_result:
        if path == "/":
            return os.stat(self.root.fd)
        pfd, name = self.root.open_parent(path)
        try:
            return os.stat(name, dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(pfd)

    def info(self, path: str, s: os.stat_result | None = None) -> dict:
        s = s or self.lstat(path)
        mode = s.st_mode
        kind = "dir" if st.S_ISDIR(mode) else "symlink" if st.S_ISLNK(mode) else "file"
        entry = {
            "name": posixpath.basename(path) or "/", "type": FILE_TYPES[kind], "path": path, "size": str(s.st_size),
            "mode": st.S_IMODE(mode), "permissions": _permissions(mode),
            "owner": self.users.get(s.st_uid, str(s.st_uid)), "group": self.groups.get(s.st_gid, str(s.st_gid)),
            "modifiedTime": datetime.fromtimestamp(s.st_mtime, UTC).isoformat().replace("+00:00", "Z"),
        }
        if kind == "symlink":
            pfd, name = self.root.open_parent(path)
            try:
                entry["symlinkTarget"] = os.readlink(name, dir_fd=pfd)
            except OSError:
                pass
            finally:
                os.close(pfd)
        return entry


class FilesystemService:
    def __init__(self, envd):
        self.envd = envd

    def _resolve(self, request, path):
        user = self.envd.user(request)
        return self.envd.path(path, user), user

    async def stat(self, request, message):
        path, _user = self._resolve(request, message.get("path"))
        try:
            with Root(self.envd.agent.root) as root:
                return {"entry": Entries(root, self.envd.agent.root).info(path)}
        except OSError as e:
            raise fs_error(e, path) from e

    async def make_dir(self, request, message):
        path, user = self._resolve(request, message.get("path"))
        try:
            with Root(self.envd.agent.root) as root:
                entries = Entries(root, self.envd.agent.root)
                try:
                    entries.lstat(path)
                    raise RpcError("already_exists", f"{path} already exists")
                except FileNotFoundError:
                    pass
                root.makedirs(path, user.uid, user.gid)
                return {"entry": entries.info(path)}
        except OSError as e:
            raise fs_error(e, path) from e

    async def move(self, request, message):
        source, user = self._resolve(request, message.get("source"))
        destination, _ = self._resolve(request, message.get("destination"))
        try:
            with Root(self.envd.agent.root) as root:
                root.makedirs(posixpath.dirname(destination) or "/", user.uid, user.gid)
                sfd, sname = root.open_parent(source)
                try:
                    dfd, dname = root.open_parent(destination)
                    try:
                        os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
                    finally:
                        os.close(dfd)
                finally:
                    os.close(sfd)
                return {"entry": Entries(root, self.envd.agent.root).info(destination)}
        except OSError as e:
            raise fs_error(e, source) from e

    async def list_dir(self, request, message):
        path, _user = self._resolve(request, message.get("path"))
        depth = message.get("depth") or 1
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise RpcError("invalid_argument", "depth must be a positive integer")
        try:
            with Root(self.envd.agent.root) as root:
                entries = Entries(root, self.envd.agent.root)
                fd = root.open(path, os.O_PATH)  # follows a symlink to a directory, inside the root
                try:
                    is_dir = st.S_ISDIR(os.fstat(fd).st_mode)
                finally:
                    os.close(fd)
                if not is_dir:
                    raise RpcError("invalid_argument", f"{path} is not a directory")
                found: list = []
                _walk(root, entries, path, depth, found)
                return {"entries": found}
        except OSError as e:
            raise fs_error(e, path) from e

    async def remove(self, request, message):
        path, _user = self._resolve(request, message.get("path"))
        try:
            remove_at(self.envd.agent.root, path, recursive=True)
        except OSError as e:
            raise fs_error(e, path) from e
        return {}

    # --- watching (inotify, watch.py) -------------------------------------------------------
    async def watch_dir(self, request, message):
        from .watch import Watcher
        path, _user = self._resolve(request, message.get("path"))
        watcher = Watcher(self.envd.agent.root, path, bool(message.get("recursive")))
        try:
            yield {"start": {}}
            while True:
                try:
                    events = await asyncio.wait_for(watcher.next_events(), 50)
                except TimeoutError:
                    yield {"keepalive": {}}
                    continue
                for event in events:
                    yield {"filesystem": event}
        finally:
            watcher.close()

    async def create_watcher(self, request, message):
        from .watch import Watcher
        path, _user = self._resolve(request, message.get("path"))
        watcher = Watcher(self.envd.agent.root, path, bool(message.get("recursive")), buffered=MAX_WATCHER_EVENTS)
        watcher_id = "w-" + secrets.token_hex(6)
        self.envd.watchers[watcher_id] = watcher
        return {"watcherId": watcher_id}

    def _watcher(self, message):
        watcher = self.envd.watchers.get(message.get("watcherId"))
        if watcher is None:
            raise RpcError("not_found", f"watcher {message.get('watcherId')!r} not found")
        return watcher

    async def get_watcher_events(self, request, message):
        return {"events": self._watcher(message).drain()}

    async def remove_watcher(self, request, message):
        self._watcher(message).close()
        self.envd.watchers.pop(message.get("watcherId"), None)
        return {}


def _walk(root: Root, entries: Entries, path: str, depth: int, found: list) -> None:
    fd = root.open(path, os.O_RDONLY | os.O_DIRECTORY)
    children = []
    try:
        with os.scandir(fd) as it:  # DirEntry.stat needs the directory's fd open
            for child in it:
                try:
                    children.append((child.name, child.stat(follow_symlinks=False)))
                except OSError:
                    continue  # vanished meanwhile
    finally:
        os.close(fd)
    for name, s in sorted(children, key=lambda c: c[0]):
        child_path = posixpath.join(path, name)
        found.append(entries.info(child_path, s))
        if depth > 1 and st.S_ISDIR(s.st_mode):
            _walk(root, entries, child_path, depth - 1, found)
