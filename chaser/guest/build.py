"""Public entry points: build (idempotent, cached) and load the guest assets."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from chaser.config import Settings
from chaser.errors import GuestAssetsMissing
from chaser.guest import cache
from chaser.guest.base_image import BASE_IMAGE
from chaser.guest.guest_os import GUEST_OS
from chaser.guest.initramfs import ensure_initramfs
from chaser.guest.kernel import ensure_kernel
from chaser.guest.rootfs import ensure_image, ensure_tarball, tarball_entry

MANIFEST = "current.json"


@dataclass(frozen=True)
class GuestAssets:
    kernel: Path  # bzImage (vmlinuz)
    initramfs: Path  # gzip cpio (newc)
    os_disk: Path  # erofs image of the guest OS (vda)
    base_rootfs: Path  # erofs image of the default sandbox root (vdb without an image)
    kernel_version: str
    fingerprint: str  # changes whenever kernel, initramfs or OS disk changes


def fingerprint(kernel_entry: str, initramfs_entry: str, os_entry: str) -> str:
    """Identity of what a booted guest (and so a memory snapshot) depends on.

    Entry names are hashes of their inputs, so hashing them is enough; the base
    root file system is attached per session and is not part of it."""
    return hashlib.sha256(f"{kernel_entry}\n{initramfs_entry}\n{os_entry}\n".encode()).hexdigest()


def build_guest_assets(settings: Settings, *, progress: Callable[[str], None] = print,
                       force: bool = False) -> GuestAssets:
    gdir = settings.guest_dir
    gdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    # One builder at a time per guest_dir (the server and the CLI may race).
    with open(gdir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if force:
            cache.prune(gdir, keep=set())
        # mmdebstrap is mostly downloading: run both (if missing) while the kernel is fetched.
        with ThreadPoolExecutor(max_workers=2) as pool:
            futs = [pool.submit(ensure_tarball, gdir, spec, progress)
                    for spec in (GUEST_OS, BASE_IMAGE) if not tarball_entry(gdir, spec).is_dir()]
            kernel = ensure_kernel(gdir, progress)
            initramfs, _ = ensure_initramfs(gdir, kernel, progress)
            for f in futs:
                f.result()
        os_disk = ensure_image(gdir, GUEST_OS, progress)
        base = ensure_image(gdir, BASE_IMAGE, progress)

        assets = GuestAssets(
            kernel=kernel.vmlinuz,
            initramfs=initramfs,
            os_disk=os_disk,
            base_rootfs=base,
            kernel_version=kernel.version,
            fingerprint=fingerprint(kernel.dir.name, initramfs.parent.name, os_disk.parent.name),
        )
        _write_manifest(gdir, assets)
        keep = {kernel.dir.name, initramfs.parent.name, os_disk.parent.name, base.parent.name,
                tarball_entry(gdir, GUEST_OS).name, tarball_entry(gdir, BASE_IMAGE).name}
        removed = cache.prune(gdir, keep)
        if removed:
            progress(f"removed old guest assets: {', '.join(sorted(removed))}")
    progress(f"guest assets ready in {time.monotonic() - t0:.1f}s (fingerprint {assets.fingerprint[:12]})")
    return assets


def _write_manifest(gdir: Path, assets: GuestAssets) -> None:
    data = {k: str(v) for k, v in asdict(assets).items()}
    tmp = gdir / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, gdir / MANIFEST)


def load_guest_assets(settings: Settings) -> GuestAssets:
    """The assets of the last successful build; never builds."""
    path = settings.guest_dir / MANIFEST
    try:
        data = json.loads(path.read_text())
        assets = GuestAssets(
            kernel=Path(data["kernel"]),
            initramfs=Path(data["initramfs"]),
            os_disk=Path(data["os_disk"]),
            base_rootfs=Path(data["base_rootfs"]),
            kernel_version=data["kernel_version"],
            fingerprint=data["fingerprint"],
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GuestAssetsMissing() from exc
    for p in (assets.kernel, assets.initramfs, assets.os_disk, assets.base_rootfs):
        if not p.is_file():
            raise GuestAssetsMissing(f"guest asset {p} is missing; run `chaser guest build`")
    return assets
