"""Resolution: a reference → the store entry it names, built if missing.

A tag is re-resolved on every call (one `skopeo inspect`), a digest already in
the store needs no registry. Concurrent requests for one digest build it once
(the digest's lock: asyncio in-process, flock across processes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from chaser import errors
from chaser.images import base as base_image
from chaser.images.build import Builder
from chaser.images.config import ImageConfig, image_config
from chaser.images.entries import ROOTFS, Entries, digest_hex
from chaser.images.locks import FileLocks
from chaser.images.progress import ProgressFn, emit
from chaser.images.pull import Skopeo, Target, check_manifest, check_platform
from chaser.images.reference import DEFAULT_IMAGE, Reference, parse
from chaser.images.refs import RefIndex
from chaser.images.unpack import read_layout

if TYPE_CHECKING:
    from chaser.config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedImage:
    reference: str  # normalised, e.g. docker.io/library/python:3.12
    digest: str  # manifest digest sha256:…
    disk: Path  # the erofs file
    config: ImageConfig
    size_bytes: int


class Resolver:
    def __init__(self, settings: Settings, entries: Entries, refs: RefIndex, locks: FileLocks,
                 skopeo: Skopeo, builder: Builder, stats: dict[str, int]) -> None:
        self.settings = settings
        self.entries = entries
        self.refs = refs
        self.locks = locks
        self.skopeo = skopeo
        self.builder = builder
        self.stats = stats  # "hits" counts the resolves this instance answered

    def parse(self, ref: str, allow_local: bool | None) -> Reference:
        r = parse(ref)
        allowed = self.settings.images_allow_local_sources if allow_local is None else allow_local
        if r.is_local and not allowed:
            raise errors.InvalidImage(f"local image sources ({r.transport}:) are not enabled on this server")
        if r.is_local and not os.path.exists(r.path):
            raise errors.ImageNotFound(f"image {r.normalized()} not found: {r.path} does not exist")
        return r

    async def resolve(self, r: Reference, progress: ProgressFn, *, offline_ok: bool) -> ResolvedImage:
        name = r.normalized()
        if r.transport == "docker" and r.digest:
            known = await asyncio.to_thread(self.refs.known_digest, r.digest)
            if known:
                return await self._hit(name, known, progress)
        emit(progress, "resolve", f"resolving {name}")
        try:
            target = await self.skopeo.resolve(r)
        except errors.ImagePullFailed:
            cached = await asyncio.to_thread(self._cached, name)
            if offline_ok and cached:
                log.warning("registry unreachable for %s; using the cached %s", name, cached)
                return await self._hit(name, cached, progress)
            raise
        if not await self._has(target.digest):
            async with self.locks.hold(digest_hex(target.digest)):
                if not await self._has(target.digest):
                    if target.manifest is not None:
                        check_manifest(target.manifest, name, self.settings.image_max_bytes)
                        if r.transport == "docker":
                            check_platform(await self.skopeo.config(r, target), name)
                    await self.builder.build(r, target, name, progress)
        return await self._hit(name, target.digest, progress, alias=target.index_digest)

    async def resolve_default(self, progress: ProgressFn) -> ResolvedImage:
        layout = await self.builder.base_layout(progress)
        digest, manifest, _ = await asyncio.to_thread(read_layout, layout, base_image.TAG)
        if not await self._has(digest):
            async with self.locks.hold(digest_hex(digest)):
                if not await self._has(digest):
                    r = Reference(transport="oci", path=str(layout), tag=base_image.TAG)
                    target = Target(digest=digest, manifest=manifest, copy_source=r.skopeo())
                    await self.builder.build(r, target, DEFAULT_IMAGE, progress, max_bytes=None)
        return await self._hit(DEFAULT_IMAGE, digest, progress)

    async def _has(self, digest: str) -> bool:
        return await asyncio.to_thread(self.entries.has, digest)

    def _cached(self, name: str) -> str | None:
        """The digest `name` had at its last resolve, if that entry is still here."""
        digest = self.refs.lookup(name)
        return digest if digest and self.entries.has(digest) else None

    async def _hit(self, name: str, digest: str, progress: ProgressFn, *, alias: str | None = None) -> ResolvedImage:
        image = await asyncio.to_thread(self._record_use, name, digest, alias)
        self.stats["hits"] += 1
        emit(progress, "done", f"{name} → {digest[:19]}")
        return image

    def _record_use(self, name: str, digest: str, alias: str | None) -> ResolvedImage:
        """Point `name` (and the index digest `alias`) at the entry, mark it used, load it."""
        entry = self.entries.path(digest)
        self.refs.update(set_refs={name: digest}, aliases={alias: digest} if alias else None)
        self.entries.touch(digest)
        meta = self.entries.meta(entry)
        config = json.loads((entry / "config.json").read_text())
        disk = entry / ROOTFS
        return ResolvedImage(reference=name, digest=digest, disk=disk, config=image_config(config),
                             size_bytes=int(meta.get("size_bytes") or disk.stat().st_size))
