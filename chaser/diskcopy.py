"""Copying sparse disk files (workspace disks, snapshots, saved VM states): a leaf module
that the service layer and the VM runtime both use."""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)
_COPY_CHUNK = 1 << 20


def _python_sparse_copy(src: Path, dst: Path) -> None:
    zero = bytes(_COPY_CHUNK)
    with open(src, "rb") as reader, open(dst, "wb") as writer:
        while chunk := reader.read(_COPY_CHUNK):
            if chunk == zero[:len(chunk)]:
                writer.seek(len(chunk), os.SEEK_CUR)
            else:
                writer.write(chunk)
        writer.truncate(writer.tell())


def copy_disk(src: Path, dst: Path) -> None:
    """Copy a sparse disk file to `dst`, atomically (a temporary file renamed over it).

    `cp --reflink=auto --sparse=always` shares extents on CoW file systems (btrfs, XFS)
    and keeps holes elsewhere; a plain Python copy that skips zero blocks is the fallback.
    Blocking: run it in a thread."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{secrets.token_hex(4)}")
    try:
        try:
            subprocess.run(["cp", "--reflink=auto", "--sparse=always", str(src), str(tmp)],
                           check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            log.warning("cp of %s failed (%s); copying in Python", src, exc)
            tmp.unlink(missing_ok=True)
            _python_sparse_copy(src, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
