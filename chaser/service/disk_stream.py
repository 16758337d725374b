"""A workspace's directory (its disk, snapshots and saved VM states) as one byte stream, for
moving it to another node (docs/architecture.md, "Moving a workspace").

Disks are sparse — 64 GiB apparent, a few MiB written — so the stream carries only the
`CHUNK`-aligned chunks that are not all zeros, found with SEEK_DATA/SEEK_HOLE. A file's digest is
SHA-256 over its size and those chunks (offset, length, bytes): a function of its content alone,
however either file system lays out its holes. The receiver writes each file, fsyncs it, reads it
back and compares that digest with the sender's, so what is checked is what landed on disk.

Records (integers big-endian):

    b"H" u32 n  JSON {"files": count, "bytes": bytes the files occupy}    first, once
    b"F" u32 n  JSON {"path": relative path, "size": apparent size, "mode": permission bits}
    b"D" u64 offset  u32 n  n bytes                                       a chunk of that file
    b"E" 32 bytes                                                         that file's digest
    b"Z"                                                                  the end

Everything here blocks (file I/O): callers run it in a thread.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

CHUNK = 1 << 20
BLOCK = 4096  # the receiver leaves a zero block of a chunk unwritten
MAX_FILE_BYTES = 1 << 40  # an apparent size beyond any disk we make: a broken or hostile stream
MAX_HEADER_BYTES = 1 << 16
_ZERO = bytes(CHUNK)
_U32 = struct.Struct(">I")
_DATA = struct.Struct(">QI")


class StreamError(ValueError):
    """The stream is malformed, or a file's digest does not match what was written."""


class DigestMismatch(StreamError):
    pass


@dataclass(frozen=True)
class Summary:
    files: int
    bytes: int  # data bytes carried (holes and zero chunks are not)
    sha256: str  # over every file's path and digest, in stream order


def data_chunks(path: Path) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of every CHUNK-aligned chunk of `path` that is not all zeros, in order."""
    with open(path, "rb") as handle:
        fd, size = handle.fileno(), os.fstat(handle.fileno()).st_size
        offset = 0  # the next chunk not yet looked at
        while offset < size:
            try:
                data = os.lseek(fd, offset, os.SEEK_DATA)
                hole = os.lseek(fd, data, os.SEEK_HOLE)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole is left
                    return
                if exc.errno != errno.EINVAL:  # EINVAL: no SEEK_DATA here; every byte counts as data
                    raise
                data, hole = offset, size
            for start in range(max(offset, data - data % CHUNK), hole, CHUNK):
                chunk = os.pread(fd, min(CHUNK, size - start), start)
                if chunk != _ZERO[:len(chunk)]:
                    yield start, chunk
            offset = max(offset, hole + (-hole % CHUNK))


class FileDigest:
    def __init__(self, size: int) -> None:
        self._hash = hashlib.sha256(struct.pack(">Q", size))

    def add(self, offset: int, chunk: bytes) -> None:
        self._hash.update(_DATA.pack(offset, len(chunk)))
        self._hash.update(chunk)

    def digest(self) -> bytes:
        return self._hash.digest()


def file_digest(path: Path) -> bytes:
    digest = FileDigest(path.stat().st_size)
    for offset, chunk in data_chunks(path):
        digest.add(offset, chunk)
    return digest.digest()


def _files(root: Path) -> list[Path]:
    """Every regular file under `root`, sorted (a symlink or device is no part of a workspace)."""
    if not root.is_dir():
        return []
    return sorted(path for path in root.rglob("*") if path.is_file() and not path.is_symlink())


def _record(kind: bytes, payload: dict[str, object]) -> bytes:
    body = json.dumps(payload).encode()
    return kind + _U32.pack(len(body)) + body


def encode(root: Path, summary: list[Summary] | None = None) -> Iterator[bytes]:
    """The stream of the directory `root` (absent: no files), in pieces of about CHUNK bytes.
    `summary`, when given, receives what was sent once the stream ends."""
    files = _files(root)
    total = sum(path.stat().st_blocks * 512 for path in files)
    overall = hashlib.sha256()
    sent = 0
    yield _record(b"H", {"files": len(files), "bytes": total})
    for path in files:
        relative = path.relative_to(root).as_posix()
        info = path.stat()
        yield _record(b"F", {"path": relative, "size": info.st_size, "mode": stat.S_IMODE(info.st_mode)})
        digest = FileDigest(info.st_size)
        for offset, chunk in data_chunks(path):
            digest.add(offset, chunk)
            sent += len(chunk)
            yield b"D" + _DATA.pack(offset, len(chunk)) + chunk
        value = digest.digest()
        overall.update(relative.encode() + b"\0" + value)
        yield b"E" + value
    yield b"Z"
    if summary is not None:
        summary.append(Summary(files=len(files), bytes=sent, sha256=overall.hexdigest()))


class Receiver:
    """Writes a stream into `root` (a new directory) as it comes: `feed` it pieces, then `finish`."""

    def __init__(self, root: Path, *, check_room: Callable[[int], None] | None = None) -> None:
        self.root = root
        self.check_room = check_room  # called with the header's bytes before anything is written
        self.header: dict[str, int] | None = None
        self._buffer = bytearray()
        self._file: tuple[str, int, int] | None = None  # (path, size, fd)
        self._overall = hashlib.sha256()
        self._files = 0
        self._bytes = 0
        self._ended = False

    def feed(self, piece: bytes) -> None:
        self._buffer += piece
        while self._next_record():
            pass

    def finish(self) -> Summary:
        if not self._ended:
            raise StreamError("the stream ended early")
        if self.header is not None and self._files != self.header["files"]:
            raise StreamError(f"the header announced {self.header['files']} files, the stream had {self._files}")
        return Summary(files=self._files, bytes=self._bytes, sha256=self._overall.hexdigest())

    def close(self) -> None:
        """Close an open file (a stream cut short); the caller removes `root`."""
        if self._file is not None:
            os.close(self._file[2])
            self._file = None

    # --- records ----------------------------------------------------------------------------------
    def _take(self, count: int) -> bytes | None:
        if len(self._buffer) < count:
            return None
        taken = bytes(self._buffer[:count])
        del self._buffer[:count]
        return taken

    def _json(self) -> dict[str, object] | None:
        if len(self._buffer) < 5:
            return None
        (length,) = _U32.unpack_from(self._buffer, 1)
        if length > MAX_HEADER_BYTES:
            raise StreamError("a record's header is too long")
        if len(self._buffer) < 5 + length:
            return None
        body = self._take(5 + length)
        assert body is not None
        try:
            value = json.loads(body[5:])
        except ValueError:
            raise StreamError("a record's header is not JSON") from None
        if not isinstance(value, dict):
            raise StreamError("a record's header is not a JSON object")
        return value

    def _next_record(self) -> bool:
        if not self._buffer:
            return False
        if self._ended:
            raise StreamError("bytes after the end of the stream")
        kind = self._buffer[:1]
        if self.header is None and kind != b"H":
            raise StreamError("the stream does not start with its header")
        if kind == b"H":
            value = self._json()
            if value is None:
                return False
            if self.header is not None:
                raise StreamError("a second header")
            files, total = value.get("files"), value.get("bytes")
            if not isinstance(files, int) or not isinstance(total, int) or files < 0 or total < 0:
                raise StreamError("the header's files and bytes must be counts")
            self.header = {"files": files, "bytes": total}
            if self.check_room is not None:
                self.check_room(total)
            self.root.mkdir(mode=0o700, parents=True)
        elif kind == b"F":
            value = self._json()
            if value is None:
                return False
            self._open(value)
        elif kind == b"D":
            if len(self._buffer) < 1 + _DATA.size:
                return False
            offset, length = _DATA.unpack_from(self._buffer, 1)
            if length > CHUNK:
                raise StreamError("a chunk is longer than the chunk size")
            if len(self._buffer) < 1 + _DATA.size + length:
                return False
            record = self._take(1 + _DATA.size + length)
            assert record is not None
            self._write(offset, record[1 + _DATA.size:])
        elif kind == b"E":
            record = self._take(33)
            if record is None:
                return False
            self._close_file(record[1:])
        elif kind == b"Z":
            self._take(1)
            if self._file is not None:
                raise StreamError("the stream ended inside a file")
            self._ended = True
        else:
            raise StreamError(f"unknown record type {bytes(kind)!r}")
        return True

    def _open(self, value: dict[str, object]) -> None:
        if self._file is not None:
            raise StreamError("a file starts before the last one ended")
        path, size, mode = value.get("path"), value.get("size"), value.get("mode")
        if not isinstance(path, str) or not isinstance(size, int) or not isinstance(mode, int):
            raise StreamError("a file record needs a path, a size and a mode")
        relative = PurePosixPath(path)
        if "\0" in path or any(part in ("", ".", "..") for part in path.split("/")):  # also a leading "/"
            raise StreamError(f"file path {path!r} is not a plain relative path")
        if not 0 <= size <= MAX_FILE_BYTES:
            raise StreamError(f"file {path!r} has an impossible size {size}")
        target = self.root.joinpath(*relative.parts)
        try:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode & 0o700 or 0o600)
        except (FileExistsError, NotADirectoryError):
            raise StreamError(f"file {path!r} comes twice, or inside another file") from None
        os.ftruncate(fd, size)
        self._file = (relative.as_posix(), size, fd)
        self._digest = FileDigest(size)

    def _write(self, offset: int, chunk: bytes) -> None:
        if self._file is None:
            raise StreamError("data outside a file")
        path, size, fd = self._file
        if offset % CHUNK or offset + len(chunk) > size:
            raise StreamError(f"a chunk of {path!r} is outside the file or not aligned")
        view = memoryview(chunk)
        for start in range(0, len(chunk), BLOCK):  # zero blocks stay holes: the copy is as sparse
            block = view[start:start + BLOCK]
            if block != _ZERO[:len(block)]:
                os.pwrite(fd, block, offset + start)
        self._bytes += len(chunk)

    def _close_file(self, expected: bytes) -> None:
        if self._file is None:
            raise StreamError("a file end outside a file")
        path, _size, fd = self._file
        os.fsync(fd)
        os.close(fd)
        self._file = None
        written = file_digest(self.root / path)  # read back: what is on disk, not what was meant
        if written != expected:
            raise DigestMismatch(f"file {path!r}: the checksum of what was written differs from the sender's")
        self._overall.update(path.encode() + b"\0" + written)
        self._files += 1
