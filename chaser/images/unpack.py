"""OCI layout → root file system tree.

Every layer tar is scanned with Python's tarfile BEFORE anything is unpacked:
entries whose normalised path is absolute or escapes the root, and hard links
whose target does, are rejected (400 `invalid_image`). Symlinks may point
anywhere (they are just symlinks inside the sandbox root); writing *through*
one is prevented by umoci, which resolves every path inside the rootfs.

Then `umoci raw unpack` (as root, not --rootless) applies the layers in order
with whiteouts and opaque directories, keeping owners, modes, setuid bits,
device nodes, symlinks and hard links.
"""

from __future__ import annotations

import gzip
import json
import os
import posixpath
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chaser import errors
from chaser.datadir import CONTENT_UMASK
from chaser.images.pull import run_tool

UMOCI = "umoci"
# Mount points the agent needs; created (as real directories) when missing.
# umoci failures caused by the host, not the image (→ 500, not 400).
_HOST_ERRORS = ("no space left on device", "disk quota exceeded", "read-only file system", "too many open files")
REQUIRED_DIRS = {"dev": 0o755, "proc": 0o555, "sys": 0o555, "tmp": 0o1777, "run": 0o755, "workspace": 0o755}


def read_blob(layout: Path, digest: str) -> bytes:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
        raise errors.InvalidImage(f"unsupported digest {digest!r}")
    return (layout / "blobs" / algo / hexd).read_bytes()


def blob_path(layout: Path, digest: str) -> Path:
    algo, _, hexd = digest.partition(":")
    return layout / "blobs" / algo / hexd


def read_layout(layout: Path, tag: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(manifest digest, manifest, config) of `layout:tag`."""
    index = json.loads((layout / "index.json").read_text())
    for desc in index.get("manifests", []):
        if (desc.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag:
            manifest = json.loads(read_blob(layout, desc["digest"]))
            config = json.loads(read_blob(layout, manifest["config"]["digest"]))
            return desc["digest"], manifest, config
    raise errors.InvalidImage(f"OCI layout {layout} has no tag {tag!r}")


def _escapes(name: str) -> bool:
    if name.startswith("/"):
        return True
    norm = posixpath.normpath(name)
    return norm == ".." or norm.startswith("../")


def scan_layer(path: Path, index: int, *, max_unpacked: int | None = None, already: int = 0) -> int:
    """Reject hostile entries in one layer tar (plain or gzip); returns the
    running total of regular-file bytes (checked against `max_unpacked`)."""
    total = already
    where = f"layer {index + 1}"
    try:
        with tarfile.open(path, mode="r|*") as tf:
            for m in tf:
                if _escapes(m.name):
                    raise errors.InvalidImage(
                        f"{where} is unsafe: entry {m.name!r} is outside the image root (absolute or '..')")
                if m.islnk() and _escapes(m.linkname):
                    raise errors.InvalidImage(
                        f"{where} is unsafe: hard link {m.name!r} points outside the image root ({m.linkname!r})")
                if m.isreg():
                    total += m.size
                    if max_unpacked is not None and total > max_unpacked:
                        raise errors.PayloadTooLarge(
                            f"image unpacks to more than {max_unpacked} bytes")
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
        raise errors.InvalidImage(f"{where} is not a valid tar archive: {exc}") from exc
    return total


def scan_layers(layout: Path, manifest: dict[str, Any], *, max_unpacked: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> int:
    layers = manifest.get("layers") or []
    total = 0
    for i, layer in enumerate(layers):
        mt = str(layer.get("mediaType", ""))
        if "zstd" in mt or ("nondistributable" in mt and "tar" not in mt):
            raise errors.InvalidImage(f"layer {i + 1} has unsupported media type {mt!r}")
        total = scan_layer(blob_path(layout, layer["digest"]), i, max_unpacked=max_unpacked, already=total)
        if progress:
            progress(i + 1, len(layers))
    return total


async def umoci_unpack(layout: Path, tag: str, rootfs: Path) -> None:
    # The tree's modes are the image's (directories umoci makes on its own too), not our private umask.
    res = await run_tool([UMOCI, "raw", "unpack", "--image", f"{layout}:{tag}", str(rootfs)], umask=CONTENT_UMASK)
    if res.returncode != 0:
        reason = res.stderr.strip()[-800:]
        if any(s in reason.lower() for s in _HOST_ERRORS):
            raise errors.ImageConversionFailed(f"unpacking the image failed on this host: {reason}")
        raise errors.InvalidImage(f"unpacking the image failed: {reason}")


def ensure_dirs(rootfs: Path) -> None:
    """The agent mounts over these; a symlink or file in their place is replaced
    (mounting on a symlink would follow it out of the sandbox root)."""
    os.chmod(rootfs, 0o755)
    for name, mode in REQUIRED_DIRS.items():
        p = rootfs / name
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            continue
        if st is not None:
            p.unlink()
        p.mkdir()
        os.chown(p, 0, 0)
        os.chmod(p, mode)


def remove_tree(path: Path) -> None:
    """rmtree that also copes with read-only directories from the image."""
    def onerror(func: Callable[[str], object], p: str, exc_info: object) -> None:
        try:
            os.chmod(os.path.dirname(p), 0o700)
            func(p)
        except OSError:
            pass

    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, onerror=onerror)
