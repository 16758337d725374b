"""Drop from a saved VM's migration stream the RAM pages that still equal the template's.

A VM restored from the template maps the template's RAM privately: every page it did
not write is still the template's. QEMU 7.2 cannot migrate relative to such a base, so
its stream holds every non-zero page. This rewrites the stream without the pages that
equal the template's page at the same offset (and the zero-page records where the
template's page is zero too); a resume that maps the same template privately then
reads those pages from it, shares them with every other clone, and loads only what
the VM changed. Anything else in the stream is copied byte for byte.

The format (QEMU's migration/savevm.c and migration/ram.c, version 3), as far as
this reads it:

    magic "QEVM", be32 version 3
    0x07 configuration: be32 len, name; subsections 0x05 (u8 len, name, be32 version, fields)
    sections: 0x01 START / 0x04 FULL: be32 id, u8 len, idstr, be32 instance, be32 version
              0x02 PART / 0x03 END: be32 id;        each followed by 0x7e, be32 id (footer)
    RAM data: records of be64 (offset | flags): MEM_SIZE 0x04 (the block list), ZERO 0x02
              (+ u8 fill), PAGE 0x08 (+ 4096 bytes), EOS 0x10 (ends the section's data);
              CONTINUE 0x20: same block as the record before, else u8 len + block id

Everything after the RAM section's END is device state, copied as it is. A stream with
anything else (compression, xbzrle, commands) is not rewritten: `filter_stream` answers
None and the caller keeps the stream whole (docs/pause-and-fork.md).
"""

from __future__ import annotations

import mmap
import os
import struct
from bisect import bisect_right
from dataclasses import dataclass
from typing import BinaryIO

PAGE = 4096
MAGIC, VERSION = 0x5145564D, 3
CONFIGURATION, SUBSECTION, FOOTER = 0x07, 0x05, 0x7E
START, PART, END, FULL = 0x01, 0x02, 0x03, 0x04
F_ZERO, F_MEM_SIZE, F_PAGE, F_EOS, F_CONTINUE = 0x02, 0x04, 0x08, 0x10, 0x20
F_KNOWN = F_ZERO | F_MEM_SIZE | F_PAGE | F_EOS | F_CONTINUE
TEMPLATE_BLOCK = b"mem"  # the memory-backend's id (chaser/vm/qemu.py)
ZERO_PAGE = bytes(PAGE)


class UnexpectedStream(Exception):
    """Not a stream this module can rewrite safely."""


@dataclass
class FilterStats:
    pages: int = 0  # PAGE records read
    zero_pages: int = 0
    dropped: int = 0  # records left out: the template has that page


class _Template:
    """The template RAM (a sealed memfd): compare a page without faulting its holes in."""

    def __init__(self, fd: int, size: int) -> None:
        self.size = size
        self.map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        starts, ends = [], []
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            starts.append(start)
            ends.append(end)
            offset = end
        self.starts, self.ends = starts, ends

    def has_data(self, offset: int) -> bool:
        index = bisect_right(self.starts, offset) - 1
        return index >= 0 and offset < self.ends[index]

    def equals(self, offset: int, page: bytes) -> bool:
        if offset + PAGE > self.size:
            return False
        if not self.has_data(offset):
            return page == ZERO_PAGE
        return self.map[offset:offset + PAGE] == page

    def is_zero(self, offset: int) -> bool:
        return offset + PAGE <= self.size and (not self.has_data(offset)
                                               or self.map[offset:offset + PAGE] == ZERO_PAGE)

    def close(self) -> None:
        self.map.close()


class _Reader:
    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def take(self, count: int) -> bytes:
        data = self.stream.read(count)
        if len(data) != count:
            raise UnexpectedStream("the stream ends early")
        return data

    def u8(self) -> int:
        return self.take(1)[0]

    def be32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def be64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def name(self) -> bytes:
        return self.take(self.u8())


def _copy_configuration(reader: _Reader, out: BinaryIO) -> None:
    if reader.u8() != CONFIGURATION:
        raise UnexpectedStream("no configuration section")
    length = reader.be32()
    out.write(bytes([CONFIGURATION]) + struct.pack(">I", length) + reader.take(length))
    while reader.stream.peek(1)[:1] == bytes([SUBSECTION]):  # type: ignore[attr-defined]
        reader.take(1)
        name = reader.name()
        header = bytes([SUBSECTION, len(name)]) + name + reader.take(4)
        if name == b"configuration/capabilities":
            count = reader.be32()
            names = [reader.name() for _ in range(count)]
            body = struct.pack(">I", count) + b"".join(bytes([len(n)]) + n for n in names)
        elif name == b"configuration/target-page-bits":
            body = reader.take(4)
        elif name == b"configuration/uuid":
            body = reader.take(16)
        else:
            raise UnexpectedStream(f"unknown configuration subsection {name!r}")
        out.write(header + body)


def _section_header(reader: _Reader, kind: int) -> tuple[int, bytes, bytes]:
    """(section id, idstr or b"", the header's bytes)."""
    section_id = reader.be32()
    raw = bytes([kind]) + struct.pack(">I", section_id)
    if kind in (START, FULL):
        idstr = reader.name()
        raw += bytes([len(idstr)]) + idstr + reader.take(8)
        return section_id, idstr, raw
    return section_id, b"", raw


class _RamRewriter:
    def __init__(self, template: _Template, out: BinaryIO, stats: FilterStats) -> None:
        self.template, self.out, self.stats = template, out, stats
        self.read_block = b""  # the block of the last record read
        self.written_block: bytes | None = None  # ... and of the last record written

    def section(self, reader: _Reader) -> None:
        """The RAM records of one section, through its EOS."""
        while True:
            value = reader.be64()
            offset, flags = value & ~(PAGE - 1), value & (PAGE - 1)
            if flags & ~F_KNOWN:
                raise UnexpectedStream(f"RAM record flags {flags:#x}")
            if flags & F_EOS:
                self.out.write(struct.pack(">Q", value))
                return
            if flags & F_MEM_SIZE:
                self.out.write(struct.pack(">Q", value) + self._block_list(reader, offset))
                continue
            if not flags & F_CONTINUE:
                self.read_block = reader.name()
            if flags & F_ZERO:
                fill = reader.take(1)
                drop = fill == b"\0" and self.read_block == TEMPLATE_BLOCK and self.template.is_zero(offset)
                self.stats.zero_pages += 1
                self._record(offset, flags & ~F_CONTINUE, fill, drop)
            elif flags & F_PAGE:
                page = reader.take(PAGE)
                drop = self.read_block == TEMPLATE_BLOCK and self.template.equals(offset, page)
                self.stats.pages += 1
                self._record(offset, flags & ~F_CONTINUE, page, drop)
            else:
                raise UnexpectedStream(f"RAM record flags {flags:#x}")

    def _record(self, offset: int, flags: int, payload: bytes, drop: bool) -> None:
        if drop:
            self.stats.dropped += 1
            return
        if self.read_block == self.written_block:  # the loader remembers the last block it read
            self.out.write(struct.pack(">Q", offset | flags | F_CONTINUE) + payload)
        else:
            self.out.write(struct.pack(">Q", offset | flags) + bytes([len(self.read_block)]) + self.read_block
                           + payload)
            self.written_block = self.read_block

    @staticmethod
    def _block_list(reader: _Reader, total: int) -> bytes:
        """MEM_SIZE: u8 len, id, be64 length, be64 address (x-ignore-shared is on) per block."""
        raw = b""
        while total > 0:
            name = reader.name()
            length = reader.be64()
            raw += bytes([len(name)]) + name + struct.pack(">Q", length) + reader.take(8)
            total -= length
        if total != 0:
            raise UnexpectedStream("RAM block sizes do not add up")
        return raw


def _rewrite(source: BinaryIO, out: BinaryIO, template: _Template) -> FilterStats:
    reader = _Reader(source)
    if reader.be32() != MAGIC or reader.be32() != VERSION:
        raise UnexpectedStream("not a version 3 migration stream")
    out.write(struct.pack(">II", MAGIC, VERSION))
    _copy_configuration(reader, out)
    stats = FilterStats()
    ram = _RamRewriter(template, out, stats)
    ram_section: int | None = None
    while True:
        kind = reader.u8()
        if kind not in (START, PART, END):
            raise UnexpectedStream(f"section type {kind:#x} before the end of RAM")
        section_id, idstr, header = _section_header(reader, kind)
        if kind == START:
            if idstr != b"ram":
                raise UnexpectedStream(f"an iterable section {idstr!r} besides RAM")
            ram_section = section_id
        elif section_id != ram_section:
            raise UnexpectedStream("a section of another iterable device")
        out.write(header)
        ram.section(reader)
        if reader.stream.peek(1)[:1] == bytes([FOOTER]):  # type: ignore[attr-defined]
            out.write(reader.take(5))
        if kind == END:
            break
    while chunk := source.read(1 << 20):  # device state, then the end: as it is
        out.write(chunk)
    return stats


def filter_stream(source_path: str | os.PathLike[str], target_path: str | os.PathLike[str],
                  template_fd: int, template_size: int) -> FilterStats | None:
    """Write `source_path` without the template's pages to `target_path` (fsynced); None
    (and no target) when the stream is not one this module rewrites. Blocking: run in a thread."""
    template = _Template(template_fd, template_size)
    try:
        with open(source_path, "rb", buffering=1 << 20) as source, open(target_path, "wb", buffering=1 << 20) as out:
            try:
                stats = _rewrite(source, out, template)
            except UnexpectedStream:
                out.close()
                os.unlink(target_path)
                return None
            out.flush()
            os.fsync(out.fileno())
        return stats
    finally:
        template.close()
