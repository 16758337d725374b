"""Guest RAM of the template as memfds.

The template VM boots with its RAM in a fresh memfd (shared mapping: its RAM
*is* the memfd). Once it is snapshotted, the memfd is sealed against writes
and resizing, and every clone maps it privately (copy-on-write). A sealed
memfd can still be mapped private-writable, but no process, a compromised
QEMU included, can change its contents: what the next clone starts from is
exactly what the template wrote. A copy is kept on disk (sparse) so the next
server process loads the same template without booting it again.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

F_ADD_SEALS = 1033
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 0x1, 0x2, 0x4, 0x8
CHUNK = 8 * 1024 * 1024


def new_memfd(name: str, size: int = 0) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    if size:
        os.ftruncate(fd, size)
    return fd


def sealed_file(name: str, chunks: Iterable[bytes]) -> int:
    """A sealed memfd holding `chunks`: passed to QEMU as /proc/self/fd/N it is on no disk,
    reachable only through the processes that hold it (the owner and root), and no QEMU can
    change it for the next one. (A re-open of /proc/self/fd/N checks the file's own mode, so
    a 0600 file of the data directory, chaser/datadir.py, could not be passed that way.)"""
    fd = new_memfd(name)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        seal(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def secret_file(name: str, data: bytes) -> int:
    """A secret (a boot token) for QEMU: see sealed_file."""
    return sealed_file(name, [data])


def sealed_copy(path: Path) -> int:
    """The guest kernel or initramfs for QEMU: see sealed_file."""
    with open(path, "rb") as source:
        return sealed_file(path.name, iter(lambda: source.read(1 << 20), b""))


def seal(fd: int) -> None:
    fcntl.fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL)


def _data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of the parts of a sparse file that hold data."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end - start
        offset = end


def copy_sparse(source: int, target: int, size: int) -> None:
    for start, length in _data_ranges(source, size):
        done = 0
        while done < length:
            chunk = os.pread(source, min(CHUNK, length - done), start + done)
            if not chunk:
                return
            os.pwrite(target, chunk, start + done)
            done += len(chunk)


def save(fd: int, path: Path, size: int) -> None:
    """Write the memfd to `path` (0600, sparse), atomically."""
    partial = path.with_suffix(".partial")
    out = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(out, size)
        copy_sparse(fd, out, size)
    finally:
        os.close(out)
    os.replace(partial, path)


def load_sealed(path: Path, size: int) -> int:
    """A sealed memfd holding the RAM file at `path`."""
    fd = new_memfd("chaser-template", size)
    try:
        source = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.fstat(source).st_size != size:
                raise OSError(errno.EINVAL, f"{path} is not {size} bytes")
            copy_sparse(source, fd, size)
        finally:
            os.close(source)
        seal(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd
