"""Minimal writer for the kernel's initramfs format: cpio "newc", gzip-compressed.

Written here so the host needs no `cpio` package, and so the archive is
reproducible (fixed mtimes, root owner, sorted entries).
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    name: str  # path inside the archive, no leading "/"
    mode: int  # full st_mode (type + permission bits)
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)  # (major, minor) for device nodes


def directory(name: str, perm: int = 0o755) -> Entry:
    return Entry(name, stat.S_IFDIR | perm)


def file(name: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(name, stat.S_IFREG | perm, data)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, stat.S_IFLNK | 0o777, target.encode())


def chardev(name: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(name, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, e: Entry, namesize: int, filesize: int) -> bytes:
    fields = (
        ino, e.mode, 0, 0,  # ino, mode, uid, gid
        2 if stat.S_ISDIR(e.mode) else 1,  # nlink
        0, filesize,  # mtime, filesize
        0, 0,  # devmajor, devminor (of the containing fs; unused)
        e.rdev[0], e.rdev[1],
        namesize, 0,  # namesize incl. NUL, check (unused by "070701")
    )
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def newc_bytes(entries: list[Entry]) -> bytes:
    """Serialize entries (parents should precede children) plus the trailer."""
    out = bytearray()
    for ino, e in enumerate([*entries, Entry("TRAILER!!!", 0)], start=1):
        name = e.name.lstrip("/").encode() + b"\0"
        hdr = _header(0 if e.name == "TRAILER!!!" else ino, e, len(name), len(e.data))
        out += hdr + name + _pad4(len(hdr) + len(name)) + e.data + _pad4(len(e.data))
    return bytes(out)


def write_gzip_newc(path: Path, entries: list[Entry]) -> None:
    # mtime=0 and no file name keep the gzip header reproducible.
    with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
        gz.write(newc_bytes(entries))
