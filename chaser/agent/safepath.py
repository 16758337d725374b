"""Resolve user-supplied paths inside the sandbox root without ever escaping it.

openat2(RESOLVE_IN_ROOT) makes the kernel treat the root fd as "/" for every
lookup step, including `..` and absolute symlink targets, so neither can climb
out; this closes the races a userspace realpath() check would leave open.
"""

import ctypes
import errno
import os
import posixpath

from .errors import bad_request

_SYS_OPENAT2 = 437  # x86_64
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = None


def _syscall():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    return _libc.syscall


def openat2(dir_fd: int, path: str, flags: int, mode: int = 0, resolve: int = RESOLVE_IN_ROOT) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    fd = _syscall()(
        ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dir_fd), ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def normalize(path) -> str:
    """Validate an API path and normalise it lexically (so `a/../b` is `b`)."""
    if not isinstance(path, str) or not path:
        raise bad_request("path is required")
    if "\0" in path:
        raise bad_request("path contains a NUL byte")
    if not path.startswith("/"):
        raise bad_request("path must be absolute")
    try:
        os.fsencode(path)  # a lone surrogate (JSON "\\ud800") names no file
    except UnicodeEncodeError:
        raise bad_request("path is not valid UTF-8") from None
    return posixpath.normpath(path).replace("//", "/")


class Root:
    """An O_PATH handle on the sandbox root; use as a context manager."""

    def __init__(self, root: str):
        self.fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self.fd)

    def open(self, path: str, flags: int, mode: int = 0) -> int:
        """Open a normalised absolute path, resolved inside the root."""
        rel = path.lstrip("/") or "."
        return openat2(self.fd, rel, flags, mode)

    def open_parent(self, path: str):
        """Return (O_PATH fd of the parent directory, final name).

        The final name is never resolved, so operations on it (unlink, rename,
        lstat) act on the entry itself even if it is a symlink."""
        parent, name = posixpath.split(path)
        if not name:
            raise bad_request("operation not allowed on the sandbox root")
        return self.open(parent, os.O_PATH | os.O_DIRECTORY), name

    def makedirs(self, path: str, uid: int = 0, gid: int = 0, mode: int = 0o755) -> None:
        """mkdir -p; directories created are chowned to uid:gid when not root."""
        parts = [p for p in path.split("/") if p]
        current = ""
        for name in parts:
            parent = current or "/"
            current = current + "/" + name
            try:
                os.close(self.open(current, os.O_PATH | os.O_DIRECTORY))
                continue
            except FileNotFoundError:
                pass
            pfd = self.open(parent, os.O_PATH | os.O_DIRECTORY)
            try:
                try:
                    os.mkdir(name, mode, dir_fd=pfd)
                except FileExistsError:
                    pass  # lost a race, or a dangling symlink: the next open tells
                else:
                    if uid or gid:
                        os.chown(name, uid, gid, dir_fd=pfd, follow_symlinks=False)
            finally:
                os.close(pfd)
            # Re-check: the name might be a symlink or a file.
            os.close(self.open(current, os.O_PATH | os.O_DIRECTORY))


def exists_dir(root: str, path: str) -> bool:
    try:
        with Root(root) as r:
            os.close(r.open(normalize(path), os.O_PATH | os.O_DIRECTORY))
        return True
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return False
        raise


def read_text(root: str, path: str) -> str | None:
    """Read a small text file inside the root; None if missing."""
    try:
        with Root(root) as r:
            fd = r.open(path, os.O_RDONLY)
    except OSError:
        return None
    with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as f:
        return f.read(4 * 1024 * 1024)
