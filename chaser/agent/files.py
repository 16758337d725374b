"""File API. Every path is resolved inside the sandbox root with openat2
(RESOLVE_IN_ROOT); operations on a final name use the parent's fd + dir_fd=."""

import errno
import os
import secrets
import stat as st

from aiohttp import web

from .errors import ApiError, bad_request, conflict, not_found
from .protocol import FILE_CHUNK_BYTES
from .safepath import Root, normalize


def _os_error(e: OSError, path: str) -> ApiError:
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
        return not_found(f"{path}: no such file or directory", code="file_not_found")
    if e.errno == errno.EISDIR:
        return bad_request(f"{path} is a directory", code="is_a_directory")
    if e.errno == errno.ENOTEMPTY:
        return conflict(f"{path}: directory not empty")
    if e.errno == errno.EXDEV:  # a lookup tried to leave the root
        return bad_request(f"{path}: path escapes the sandbox")
    if e.errno in (errno.ENAMETOOLONG, errno.ELOOP):  # the caller's path, not the agent, is at fault
        return bad_request(f"{path}: {e.strerror}")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ApiError(403, "permission_denied", f"{path}: {e.strerror}")
    return ApiError(500, "internal_error", f"{path}: {e.strerror}")


def _type_of(mode: int) -> str:
    if st.S_ISREG(mode):
        return "file"
    if st.S_ISDIR(mode):
        return "dir"
    if st.S_ISLNK(mode):
        return "symlink"
    return "other"


def _describe(s: os.stat_result) -> dict:
    return {"type": _type_of(s.st_mode), "size": s.st_size, "mode": st.S_IMODE(s.st_mode), "mtime": s.st_mtime}


def _lstat(root: Root, path: str) -> os.stat_result:
    if path == "/":
        return os.stat(root.fd)
    pfd, name = root.open_parent(path)
    try:
        return os.stat(name, dir_fd=pfd, follow_symlinks=False)
    finally:
        os.close(pfd)


def _owner(agent):
    """uid/gid that new files get: the init user's (files stay usable by it)."""
    user = agent.user()
    return user.uid, user.gid


async def get_file(agent, request):
    path = normalize(request.query.get("path"))
    try:
        with Root(agent.root) as root:
            # O_NONBLOCK: opening a FIFO must not hang the agent.
            fd = root.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise _os_error(e, path) from e
    try:
        s = os.fstat(fd)
        if st.S_ISDIR(s.st_mode):
            raise bad_request(f"{path} is a directory", code="is_a_directory")
        if not st.S_ISREG(s.st_mode):
            raise bad_request(f"{path} is not a regular file")
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = s.st_size
        await resp.prepare(request)
        # The file may grow meanwhile: send what we promised. HEAD: the headers only (a
        # StreamResponse would send the bytes anyway, and a kept-alive client read them as
        # the start of its next response).
        remaining = s.st_size if request.method != "HEAD" else 0
        while remaining > 0:
            chunk = os.read(fd, min(FILE_CHUNK_BYTES, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            await resp.write(chunk)
        await resp.write_eof()
        return resp
    finally:
        os.close(fd)


async def put_file(agent, request):
    path = normalize(request.query.get("path"))
    try:
        mode = int(request.query.get("mode", "0644"), 8)
    except ValueError:
        raise bad_request("mode must be an octal string") from None
    if not 0 <= mode <= 0o7777:
        raise bad_request("mode out of range")
    uid, gid = _owner(agent)
    size = await write_file(agent.root, path, request.content.iter_chunked(FILE_CHUNK_BYTES), mode=mode,
                            uid=uid, gid=gid)
    return web.json_response({"path": path, "size": size})


async def write_file(root_dir: str, path: str, chunks, *, mode: int = 0o644, uid: int = 0, gid: int = 0) -> int:
    """Write the async iterator `chunks` to `path` (parents made, owned by uid:gid), atomically
    (a fresh temporary name, renamed over the file): the size written. Also envd's uploads."""
    tmp = None
    try:
        with Root(root_dir) as root:
            parent = path.rsplit("/", 1)[0] or "/"
            root.makedirs(parent, uid, gid)
            pfd, name = root.open_parent(path)
            try:
                try:
                    if st.S_ISDIR(os.stat(name, dir_fd=pfd, follow_symlinks=False).st_mode):
                        raise bad_request(f"{path} is a directory", code="is_a_directory")
                except FileNotFoundError:
                    pass
                # O_EXCL on a fresh random name: never follows a planted symlink.
                tmp = f".{name[:100]}.chaser-{secrets.token_hex(6)}"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=pfd)
                size = 0
                try:
                    async for chunk in chunks:
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view):]
                        size += len(chunk)
                    os.fchmod(fd, mode)  # after creation, so the umask does not apply
                    if uid or gid:
                        os.fchown(fd, uid, gid)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)  # atomic replace
                tmp = None
            finally:
                if tmp is not None:
                    try:
                        os.unlink(tmp, dir_fd=pfd)
                    except OSError:
                        pass
                os.close(pfd)
    except OSError as e:
        raise _os_error(e, path) from e
    return size


async def list_dir(agent, request):
    path = normalize(request.query.get("path"))
    try:
        with Root(agent.root) as root:
            fd = root.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            entries = []
            with os.scandir(fd) as it:
                for entry in it:
                    try:
                        info = _describe(entry.stat(follow_symlinks=False))
                    except OSError:
                        continue  # vanished meanwhile
                    entries.append({"name": entry.name, **info})
        finally:
            os.close(fd)
    except OSError as e:
        raise _os_error(e, path) from e
    entries.sort(key=lambda e: e["name"])
    return web.json_response({"path": path, "entries": entries})


async def stat(agent, request):
    path = normalize(request.query.get("path"))
    try:
        with Root(agent.root) as root:
            s = _lstat(root, path)
    except OSError as e:
        raise _os_error(e, path) from e
    return web.json_response({"path": path, **_describe(s)})


async def mkdir(agent, request):
    from .server import read_json
    body = await read_json(request)
    path = normalize(body.get("path"))
    uid, gid = _owner(agent)
    try:
        with Root(agent.root) as root:
            root.makedirs(path, uid, gid)
    except OSError as e:
        raise _os_error(e, path) from e
    return web.json_response({"path": path})


def _rmtree_at(dir_fd: int) -> None:
    """Empty a directory given as an fd, never following symlinks."""
    with os.scandir(dir_fd) as it:
        entries = list(it)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                _rmtree_at(sub)
            finally:
                os.close(sub)
            os.rmdir(entry.name, dir_fd=dir_fd)
        else:
            os.unlink(entry.name, dir_fd=dir_fd)


def remove_at(sandbox_root, path: str, *, recursive: bool) -> None:
    """Remove `path` inside the sandbox without following a symlink on the way (OSError as it is)."""
    with Root(sandbox_root) as root:
        pfd, name = root.open_parent(path)
        try:
            mode = os.stat(name, dir_fd=pfd, follow_symlinks=False).st_mode
            if st.S_ISDIR(mode):
                if recursive:
                    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
                    try:
                        _rmtree_at(fd)
                    finally:
                        os.close(fd)
                os.rmdir(name, dir_fd=pfd)
            else:
                os.unlink(name, dir_fd=pfd)
        finally:
            os.close(pfd)


async def delete(agent, request):
    path = normalize(request.query.get("path"))
    recursive = request.query.get("recursive", "false").lower() in ("1", "true", "yes")
    try:
        remove_at(agent.root, path, recursive=recursive)
    except OSError as e:
        raise _os_error(e, path) from e
    return web.json_response({"path": path, "deleted": True})
