"""The workspace move's stream (chaser/service/disk_stream.py): sparse files whole and sparse on the
other side, a checksum of content alone, and every malformed stream refused."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import pytest

from chaser.service.disk_stream import CHUNK, DigestMismatch, Receiver, StreamError, encode, file_digest


def sparse_file(path: Path, size: int, writes: dict[int, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset, data in writes.items():
            handle.seek(offset)
            handle.write(data)
    return path


def copy(src: Path, dst: Path) -> tuple:
    sent: list = []
    receiver = Receiver(dst)
    for piece in encode(src, sent):
        receiver.feed(piece)
    return sent[0], receiver.finish()


def test_a_sparse_directory_arrives_whole_and_sparse(tmp_path):
    src = tmp_path / "src"
    disk = sparse_file(src / "disk.img", 64 << 30, {5 << 20: b"x" * 5000, (40 << 30) + 7: os.urandom(3 << 20)})
    sparse_file(src / "snapshots" / "snap_1.img", 1 << 20, {0: b"hello" * 1000})
    sparse_file(src / "snapshots" / "snap_2.state" / "memory", 10_000, {9_999: b"\x01"})  # an unaligned end
    sent, received = copy(src, tmp_path / "dst")
    assert sent == received and received.files == 3
    for path in (src / "disk.img", src / "snapshots" / "snap_1.img", src / "snapshots" / "snap_2.state" / "memory"):
        twin = tmp_path / "dst" / path.relative_to(src)
        assert twin.stat().st_size == path.stat().st_size
        assert file_digest(twin) == file_digest(path)
    copied = tmp_path / "dst" / "disk.img"
    assert copied.stat().st_blocks * 512 <= disk.stat().st_blocks * 512 + CHUNK  # holes stayed holes
    with open(copied, "rb") as handle:
        handle.seek((40 << 30) + 7)
        with open(disk, "rb") as original:
            original.seek((40 << 30) + 7)
            assert handle.read(3 << 20) == original.read(3 << 20)


def test_the_checksum_is_of_content_not_of_holes(tmp_path):
    dense = tmp_path / "dense"
    dense.write_bytes(bytes(3 * CHUNK) + b"tail")
    sparse = sparse_file(tmp_path / "sparse", 3 * CHUNK + 4, {3 * CHUNK: b"tail"})
    assert file_digest(dense) == file_digest(sparse)
    assert file_digest(sparse) != file_digest(sparse_file(tmp_path / "other", 3 * CHUNK + 4, {3 * CHUNK: b"tall"}))
    assert file_digest(sparse) != file_digest(sparse_file(tmp_path / "longer", 3 * CHUNK + 5, {3 * CHUNK: b"tail"}))


def test_an_empty_or_missing_directory_is_a_stream_of_no_files(tmp_path):
    sent, received = copy(tmp_path / "absent", tmp_path / "dst")
    assert sent == received and received.files == 0 and (tmp_path / "dst").is_dir()


def record(kind: bytes, payload: dict) -> bytes:
    body = json.dumps(payload).encode()
    return kind + struct.pack(">I", len(body)) + body


def data(offset: int, chunk: bytes) -> bytes:
    return b"D" + struct.pack(">QI", offset, len(chunk)) + chunk


HEADER = record(b"H", {"files": 1, "bytes": 4096})
FILE = record(b"F", {"path": "disk.img", "size": 10, "mode": 0o600})


@pytest.mark.parametrize("stream, message", [
    (FILE, "does not start with its header"),
    (HEADER + HEADER, "a second header"),
    (HEADER + record(b"F", {"path": "../escape", "size": 1, "mode": 0o600}), "not a plain relative path"),
    (HEADER + record(b"F", {"path": "/etc/passwd", "size": 1, "mode": 0o600}), "not a plain relative path"),
    (HEADER + record(b"F", {"path": "a/./b", "size": 1, "mode": 0o600}), "not a plain relative path"),
    (HEADER + record(b"F", {"path": "disk.img", "size": -1, "mode": 0o600}), "impossible size"),
    (HEADER + record(b"F", {"path": "disk.img", "mode": 0o600}), "needs a path, a size and a mode"),
    (HEADER + FILE + data(0, b"x" * 11), "outside the file"),
    (HEADER + FILE + data(1, b"x"), "not aligned"),
    (HEADER + data(0, b"x"), "data outside a file"),
    (HEADER + FILE + FILE, "before the last one ended"),
    (HEADER + FILE + data(0, b"0123456789") + b"E" + b"\0" * 32, "differs"),

    (HEADER + FILE + b"Z", "ended inside a file"),
    (HEADER + b"Q", "unknown record type"),
    (HEADER + b"H" + struct.pack(">I", 1 << 20), "too long"),
    (HEADER + b"F" + struct.pack(">I", 4) + b"[1] ", "not a JSON object"),
    (HEADER + b"Z" + b"Z", "after the end"),
])
def test_a_malformed_stream_is_refused(tmp_path, stream, message):
    receiver = Receiver(tmp_path / "dst")
    with pytest.raises(StreamError, match=message):
        receiver.feed(stream)
        receiver.finish()
    receiver.close()


def test_a_file_twice_or_inside_a_file_is_refused(tmp_path):
    content = b"0123456789"
    (tmp_path / "one").write_bytes(content)
    whole = FILE + data(0, content) + b"E" + file_digest(tmp_path / "one")
    inside = record(b"F", {"path": "disk.img/inner", "size": 1, "mode": 0o600})
    for stream in (HEADER + whole + whole, HEADER + whole + inside):
        receiver = Receiver(tmp_path / f"dst-{len(stream)}")
        with pytest.raises(StreamError, match="twice, or inside another file"):
            receiver.feed(stream)
        receiver.close()


def test_a_cut_stream_or_a_wrong_count_is_refused(tmp_path):
    for stream, message in ((HEADER + FILE + data(0, b"0123456789"), "ended early"),
                            (HEADER + b"Z", "announced 1 files")):
        receiver = Receiver(tmp_path / message.replace(" ", "-"))
        receiver.feed(stream)
        with pytest.raises(StreamError, match=message):
            receiver.finish()
        receiver.close()


def test_a_file_whose_checksum_differs_is_refused(tmp_path):
    receiver = Receiver(tmp_path / "dst")
    with pytest.raises(DigestMismatch, match=r"disk\.img"):
        receiver.feed(HEADER + FILE + data(0, b"0123456789") + b"E" + hashlib.sha256(b"other").digest())
    receiver.close()


def test_room_is_checked_before_anything_is_written(tmp_path):
    def no_room(needed: int) -> None:
        raise OSError(f"no room for {needed}")

    receiver = Receiver(tmp_path / "dst", check_room=no_room)
    with pytest.raises(OSError, match="no room for 4096"):
        receiver.feed(HEADER)
    assert not (tmp_path / "dst").exists()
