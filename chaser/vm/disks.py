"""Disk files for the fixed-size slots: a restored clone keeps the disk sizes the
template saw at boot, so every slot has one apparent size (docs/architecture.md, "Facts")."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from chaser import errors


def create_sparse(path: Path, size_bytes: int) -> None:
    with open(path, "wb") as handle:
        handle.truncate(size_bytes)


def pad_to_slot(image: Path, slot_bytes: int) -> None:
    """Pad an erofs image to the slot size (sparse; erofs ignores the tail)."""
    size = image.stat().st_size
    if size > slot_bytes:
        raise errors.PayloadTooLarge(
            f"image file system is {size} bytes, larger than the {slot_bytes}-byte image slot"
        )
    if size < slot_bytes:
        os.truncate(image, slot_bytes)


def create_writable_disk(path: Path, *, size_bytes: int, slot_bytes: int) -> None:
    """A sparse file of the slot size holding an ext4 file system of `size_bytes`
    (the quota); growing the quota later is a `resize2fs`."""
    if size_bytes > slot_bytes:
        raise errors.InvalidRequest(f"disk size {size_bytes} exceeds the writable slot of {slot_bytes} bytes")
    create_sparse(path, slot_bytes)
    try:
        subprocess.run(
            [
                "mkfs.ext4", "-q", "-F", "-m", "0", "-L", "chaser-data",
                "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
                str(path), f"{size_bytes // 1024}k",
            ],
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as exc:
        path.unlink(missing_ok=True)
        raise errors.SandboxRuntimeError(f"mkfs.ext4 failed: {exc.stderr.decode(errors='replace')[-500:]}") from exc
