"""Root file system tree → erofs image (the VM's read-only vdb).

Uncompressed, like the guest OS disk: under TCG every decompressed byte costs
emulated CPU, and reads of an uncompressed erofs are plain block copies;
lz4 would save ~35 % of disk (docs/architecture.md, "Facts": 253 MB → 163 MB for the base
image) at ~1.7 times the build time and slower reads in the guest. Host disk is
the cheaper resource here."""

from __future__ import annotations

from pathlib import Path

from chaser import errors
from chaser.images.pull import run_tool

MKFS = "mkfs.erofs"


async def make_erofs(tree: Path, out: Path, *, max_bytes: int | None = None) -> int:
    res = await run_tool([MKFS, "--quiet", str(out), str(tree)])
    if res.returncode != 0:
        out.unlink(missing_ok=True)
        reason = res.stderr.strip()[-800:] or f"exit {res.returncode}"
        raise errors.ImageConversionFailed(f"mkfs.erofs failed: {reason}")
    size = out.stat().st_size
    if max_bytes is not None and size > max_bytes:
        out.unlink(missing_ok=True)
        raise errors.PayloadTooLarge(
            f"the image's file system is {size} bytes, over the disk slot of {max_bytes} bytes")
    return size
