"""The build pipeline: pull → scan → unpack → convert, into a new store entry.

A build works in a fresh work dir: skopeo copies the image into an OCI layout
there, every layer is scanned before umoci unpacks them, mkfs.erofs makes the
disk, and the finished entry is renamed into `sha256/`, so nothing half-written
is ever visible. The tools run as subprocesses; the file system work between
them runs in worker threads.

The default image's layout (`base/<key>/layout`) is imported here too, from the
guest builder's tarball, before it goes through the same pipeline.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chaser import errors
from chaser.images import base as base_image
from chaser.images.config import image_config
from chaser.images.convert import make_erofs
from chaser.images.entries import ROOTFS, Entries, digest_hex
from chaser.images.locks import FileLocks
from chaser.images.progress import ProgressFn, emit
from chaser.images.pull import Skopeo, Target, check_manifest, check_platform
from chaser.images.reference import Reference
from chaser.images.unpack import ensure_dirs, read_blob, read_layout, remove_tree, scan_layers, umoci_unpack

if TYPE_CHECKING:
    from chaser.config import Settings

LAYOUT_TAG = "image"
BASE_LOCK = "base"


class Builder:
    def __init__(self, settings: Settings, entries: Entries, locks: FileLocks, skopeo: Skopeo,
                 stats: dict[str, int]) -> None:
        self.settings = settings
        self.entries = entries
        self.locks = locks
        self.skopeo = skopeo
        self.base_dir = entries.root / "base"
        self.stats = stats  # "builds" counts the entries this instance made
        self.last_timings: dict[str, float] = {}

    async def build(self, r: Reference, target: Target, name: str, progress: ProgressFn,
                    *, max_bytes: int | bool | None = True) -> None:
        """Pull, scan, unpack, convert; rename the entry into place. Caller holds the
        digest lock. `max_bytes` True: settings.image_max_bytes; None: no limit."""
        if max_bytes is True:
            max_bytes = self.settings.image_max_bytes
        limit = None if max_bytes is None else int(max_bytes)
        hexd = digest_hex(target.digest)
        slot = self.settings.image_slot_bytes
        work = await asyncio.to_thread(self.entries.mkwork, hexd)
        timings: dict[str, float] = {}
        try:
            layout = work / "oci"
            total = len(target.manifest.get("layers") or []) if target.manifest else None
            copied = 0
            emit(progress, "pull", f"pulling {name}", 0, total)

            def on_line(line: str) -> None:
                nonlocal copied
                if line.startswith("Copying blob"):
                    copied += 1
                    emit(progress, "pull", f"pulling {name}: layer {copied}/{total or '?'}", copied, total)

            t0 = time.monotonic()
            await self.skopeo.copy(r, target.copy_source, layout, LAYOUT_TAG, on_line=on_line)
            timings["pull_s"] = time.monotonic() - t0
            layout_digest, manifest, config = await asyncio.to_thread(read_layout, layout, LAYOUT_TAG)
            compressed = check_manifest(manifest, name, limit)
            check_platform(config, name)
            image_config(config)  # reject malformed Env/WorkingDir/User now, not at session start

            n = len(manifest["layers"])
            emit(progress, "verify", f"checking {n} layer(s)", 0, n)
            t0 = time.monotonic()
            unpacked = await asyncio.to_thread(
                scan_layers, layout, manifest, max_unpacked=slot,
                progress=lambda i, k: emit(progress, "verify", f"checked layer {i}/{k}", i, k))
            timings["verify_s"] = time.monotonic() - t0

            emit(progress, "unpack", f"unpacking {n} layer(s)")
            t0 = time.monotonic()
            rootfs = work / "rootfs"
            await umoci_unpack(layout, LAYOUT_TAG, rootfs)
            await asyncio.to_thread(ensure_dirs, rootfs)
            timings["unpack_s"] = time.monotonic() - t0

            emit(progress, "convert", "making the erofs disk")
            t0 = time.monotonic()
            out = work / "entry"
            await asyncio.to_thread(out.mkdir)
            size = await make_erofs(rootfs, out / ROOTFS, max_bytes=slot)
            timings["convert_s"] = time.monotonic() - t0

            meta = {
                "digest": target.digest,
                "index_digest": target.index_digest,
                "layout_digest": layout_digest,
                "source": name,
                "created": time.time(),
                "size_bytes": size,
                "compressed_bytes": compressed,
                "unpacked_file_bytes": unpacked,
                "layers": [layer["digest"] for layer in manifest["layers"]],
                "timings": {k: round(v, 3) for k, v in timings.items()},
            }
            await asyncio.to_thread(self._finish, layout, manifest, layout_digest, meta, out, target.digest)
            self.stats["builds"] += 1
            self.last_timings = timings
        except OSError as exc:  # disk full, permissions… while writing our own files
            raise errors.ImageConversionFailed(f"building the image {name} failed on this host: {exc}") from exc
        finally:
            await asyncio.to_thread(remove_tree, work)

    def _finish(self, layout: Path, manifest: dict[str, Any], layout_digest: str, meta: dict[str, Any],
                out: Path, digest: str) -> None:
        """Write the entry's bookkeeping next to its disk and rename it into place."""
        (out / "config.json").write_bytes(read_blob(layout, manifest["config"]["digest"]))
        (out / "manifest.json").write_bytes(read_blob(layout, layout_digest))
        (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        (out / "last_used").touch()
        self.entries.install(out, digest)

    async def base_layout(self, progress: ProgressFn) -> Path:
        """The OCI layout of the default image, imported from the guest builder's
        tarball once per tarball content (older imports are deleted)."""
        tar = await asyncio.to_thread(base_image.find_base_tarball, self.settings)
        async with self.locks.hold(BASE_LOCK):
            # Under the lock: the tarball is hashed once (then memoised by its stat).
            key = await asyncio.to_thread(base_image.content_key, tar, self.base_dir)
            entry = self.base_dir / key[:32]
            layout = entry / "layout"
            if not await asyncio.to_thread((layout / "index.json").is_file):
                emit(progress, "pull", f"importing the default image from {tar}")
                t0 = time.monotonic()
                work = await asyncio.to_thread(self.entries.mkwork, BASE_LOCK)
                try:
                    await base_image.build_layout(tar, work / "x" / "layout", work)
                    await asyncio.to_thread(self._install_base, work / "x", entry)
                finally:
                    await asyncio.to_thread(remove_tree, work)
                self.last_timings = {"import_s": time.monotonic() - t0}
                await asyncio.to_thread(self._drop_other_bases, entry)
        return layout

    def _install_base(self, built: Path, entry: Path) -> None:
        os.chmod(built, 0o700)  # the data directory is private (chaser/datadir.py)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        os.rename(built, entry)

    def _drop_other_bases(self, keep: Path) -> None:
        for old in self.base_dir.iterdir():
            if old.is_dir() and old.name != keep.name:
                remove_tree(old)
