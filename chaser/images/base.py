"""The default image `chaser/base`, imported from the guest builder's tarball.

The guest builder (`chaser guest build`) already makes the base root file
system as a tarball (mmdebstrap, cache entry `base-tar-<key>/rootfs.tar`).
It is stored as an OCI image in a local layout (`umoci init` + `new` +
`raw add-layer`, plus one small layer of our own: resolv.conf for slirp's
DNS and the mount-point directories), then goes through the same pipeline
as any image (`oci:` copy, scan, unpack, erofs). The layout is keyed by the
tarball's content hash, so the import is done once per tarball.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from chaser import errors
from chaser.images.pull import run_tool

if TYPE_CHECKING:
    from chaser.config import Settings

TAG = "latest"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_HASH_CACHE = ".tar-hashes.json"


def find_base_tarball(settings: Settings) -> Path:
    from chaser.guest.base_image import BASE_IMAGE
    from chaser.guest.rootfs import tarball_entry

    gdir = settings.guest_dir
    current = tarball_entry(gdir, BASE_IMAGE) / "rootfs.tar"
    if current.is_file():
        return current
    # An older builder key (e.g. the package list changed but not rebuilt yet).
    found = sorted(gdir.glob("base-tar-*/rootfs.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    if found:
        return found[0]
    raise errors.GuestAssetsMissing(
        f"the default image needs the base root file system tarball ({current}); run `chaser guest build`")


def content_key(tar: Path, cache_dir: Path) -> str:
    """sha256 of the tarball, memoised by (path, size, mtime, inode) so it is
    hashed once, not on every resolve."""
    st = tar.stat()
    stamp = f"{tar.resolve()}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
    cache_file = cache_dir / _HASH_CACHE
    try:
        memo = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        memo = {}
    cached = memo.get(stamp) if isinstance(memo, dict) else None
    if isinstance(cached, str):
        return cached
    h = hashlib.sha256()
    with open(tar, "rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    key = h.hexdigest()
    memo = {stamp: key}  # only the current tarball matters
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{_HASH_CACHE}.", suffix=".tmp", dir=cache_dir)
    with os.fdopen(fd, "w") as f:
        json.dump(memo, f)
    os.replace(tmp, cache_file)
    return key


def extra_layer(path: Path) -> Path:
    """Our additions on top of mmdebstrap's tree (same as the guest builder's
    prepare_tree): resolv.conf pointing at slirp's DNS, mount points."""
    from chaser.guest.rootfs import RESOLV_CONF

    now = int(time.time())
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, mode in (("mnt", 0o755), ("var/tmp", 0o1777), ("workspace", 0o755), ("tmp", 0o1777)):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, mode, now
            tf.addfile(ti)
        data = RESOLV_CONF.encode()
        ti = tarfile.TarInfo("etc/resolv.conf")
        ti.size, ti.mode, ti.mtime = len(data), 0o644, now
        tf.addfile(ti, io.BytesIO(data))
    return path


async def _umoci(*args: str) -> None:
    res = await run_tool(["umoci", *args])
    if res.returncode != 0:
        raise errors.ImageConversionFailed(f"umoci {args[0]} failed: {res.stderr.strip()[-800:]}")


async def build_layout(tar: Path, layout: Path, work: Path) -> None:
    """Make `layout:latest` from the base tarball (layout must not exist)."""
    image = f"{layout}:{TAG}"
    await _umoci("init", "--layout", str(layout))
    await _umoci("new", "--image", image)
    await _umoci("raw", "add-layer", "--image", image, str(tar))
    extra = await asyncio.to_thread(extra_layer, work / "chaser-extra.tar")
    await _umoci("raw", "add-layer", "--image", image, str(extra))
    await _umoci("config", "--image", image, "--config.env", PATH_ENV,
                 "--os", "linux", "--architecture", "amd64",
                 "--author", "chaser", "--config.label", "org.opencontainers.image.title=chaser/base")
    await _umoci("gc", "--layout", str(layout))
