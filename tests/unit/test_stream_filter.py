"""The migration-stream rewrite (chaser/vm/stream_filter.py) on streams built here in QEMU's
format; tests/integration/test_pause_fork.py resumes VMs from real rewritten streams."""

from __future__ import annotations

import os
import struct

import pytest

from chaser.vm import memory
from chaser.vm.stream_filter import (
    F_CONTINUE,
    F_EOS,
    F_MEM_SIZE,
    F_PAGE,
    F_ZERO,
    FOOTER,
    PAGE,
    _Reader,
    filter_stream,
)

SIZE = 16 * PAGE


def name(value: bytes) -> bytes:
    return bytes([len(value)]) + value


def record(offset: int, flags: int, block: bytes | None, payload: bytes) -> bytes:
    head = struct.pack(">Q", offset | flags | (F_CONTINUE if block is None else 0))
    return head + (name(block) if block is not None else b"") + payload


def page(fill: int) -> bytes:
    return bytes([fill]) * PAGE


@pytest.fixture
def template():
    """Pages 0-3 hold 0x11, 0x22, 0x33, 0x44; the rest is a hole (zero)."""
    fd = memory.new_memfd("test-template", SIZE)
    for index, fill in enumerate((0x11, 0x22, 0x33, 0x44)):
        os.pwrite(fd, page(fill), index * PAGE)
    memory.seal(fd)
    yield fd
    os.close(fd)


def stream(records: list[bytes], tail: bytes = b"\x04device-state\x00") -> bytes:
    header = struct.pack(">II", 0x5145564D, 3)
    config = b"\x07" + struct.pack(">I", 7) + b"microvm"
    config += b"\x05" + name(b"configuration/capabilities") + struct.pack(">II", 1, 1) + name(b"x-ignore-shared")
    start = b"\x01" + struct.pack(">I", 2) + name(b"ram") + struct.pack(">II", 0, 4)
    blocks = name(b"mem") + struct.pack(">QQ", SIZE, 0) + name(b"pc.bios") + struct.pack(">QQ", PAGE, 0xFFFF0000)
    start += struct.pack(">Q", (SIZE + PAGE) | F_MEM_SIZE) + blocks + struct.pack(">Q", F_EOS)
    footer = bytes([FOOTER]) + struct.pack(">I", 2)
    part = b"\x02" + struct.pack(">I", 2) + b"".join(records) + struct.pack(">Q", F_EOS) + footer
    end = b"\x03" + struct.pack(">I", 2) + struct.pack(">Q", F_EOS) + footer
    return header + config + start + footer + part + end + tail


def parse_pages(data: bytes) -> list[tuple[bytes, int, int, bytes]]:
    """(block, offset, flags, payload) of every page record of the PART section."""
    import io

    marker = b"\x02" + struct.pack(">I", 2)  # the PART section, after the header and START
    reader = _Reader(io.BufferedReader(io.BytesIO(data[data.index(marker, 60) + 5:])))  # type: ignore[arg-type]
    out, block = [], b""
    while True:
        value = reader.be64()
        offset, flags = value & ~(PAGE - 1), value & (PAGE - 1)
        if flags & F_EOS:
            return out
        if not flags & F_CONTINUE:
            block = reader.name()
        payload = reader.take(1) if flags & F_ZERO else reader.take(PAGE)
        out.append((block, offset, flags & ~F_CONTINUE, payload))


def test_pages_equal_to_the_template_are_dropped_and_the_rest_kept_exactly(tmp_path, template):
    records = [
        record(0, F_PAGE, b"mem", page(0x11)),  # as the template: dropped
        record(PAGE, F_PAGE, None, page(0x99)),  # changed: kept, and now names its block
        record(2 * PAGE, F_ZERO, None, b"\0"),  # zeroed where the template has data: kept
        record(5 * PAGE, F_ZERO, None, b"\0"),  # zero where the template is a hole: dropped
        record(6 * PAGE, F_PAGE, None, page(0)),  # a zero page sent as data, template hole: dropped
        record(0, F_PAGE, b"pc.bios", page(0x11)),  # another block: never compared, kept
        record(3 * PAGE, F_PAGE, b"mem", page(0x44)),  # dropped
        record(7 * PAGE, F_PAGE, None, page(0x77)),  # kept: CONTINUE would now mean pc.bios
    ]
    source, target = tmp_path / "whole", tmp_path / "filtered"
    data = stream(records)
    source.write_bytes(data)
    stats = filter_stream(source, target, template, SIZE)
    assert stats is not None and stats.dropped == 4 and stats.pages == 6 and stats.zero_pages == 2
    out = target.read_bytes()
    assert out.endswith(b"\x04device-state\x00") and out[:60] == data[:60]
    assert parse_pages(out) == [
        (b"mem", PAGE, F_PAGE, page(0x99)),
        (b"mem", 2 * PAGE, F_ZERO, b"\0"),
        (b"pc.bios", 0, F_PAGE, page(0x11)),
        (b"mem", 7 * PAGE, F_PAGE, page(0x77)),
    ]
    assert len(out) <= len(data) - 3 * PAGE  # three data pages dropped (and a zero record)


@pytest.mark.parametrize("bad", [
    record(0, 0x100, b"mem", page(1)),  # a compressed page
    record(0, 0x40, b"mem", b""),  # xbzrle
])
def test_a_stream_it_does_not_know_is_left_whole(tmp_path, template, bad):
    source, target = tmp_path / "whole", tmp_path / "filtered"
    source.write_bytes(stream([bad]))
    assert filter_stream(source, target, template, SIZE) is None
    assert not target.exists()


def test_a_truncated_stream_is_left_whole(tmp_path, template):
    source, target = tmp_path / "whole", tmp_path / "filtered"
    source.write_bytes(stream([record(PAGE, F_PAGE, b"mem", page(0x99))])[:200])
    assert filter_stream(source, target, template, SIZE) is None and not target.exists()
