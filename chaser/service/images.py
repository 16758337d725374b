"""Image references → the disk and config a session boots with; the image store's
operations for the API (list, pull, prune, remove)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from chaser import errors
from chaser.config import Settings
from chaser.images import DEFAULT_IMAGE, ImageConfig, ImageRow, ImageStore, ResolvedImage, normalize
from chaser.runtime import Runtime

__all__ = ["DEFAULT_IMAGE", "NO_CONFIG", "ImageService", "check_image_ref"]

NO_CONFIG = ImageConfig(env={}, workdir=None, user=None)


def check_image_ref(ref: str | None) -> str:
    """Validate a reference without pulling; returns its canonical form."""
    if ref is None or not ref.strip():
        return DEFAULT_IMAGE
    if len(ref) > 1024 or any(ch.isspace() or ord(ch) < 32 for ch in ref):
        raise errors.InvalidImage(f"image reference {ref[:80]!r} is not valid")
    if ref.split(":", 1)[0] in ("oci", "oci-archive", "docker-archive", "docker", "dir"):
        # Host paths: only `chaser images pull` on the server's machine may read them.
        raise errors.InvalidImage("local image sources are not accepted over the API; use `chaser images pull`")
    return normalize(ref)


def _no_images_in_use() -> set[str]:
    return set()


class ImageService:
    """One image store per server process; sessions resolve images through it.

    `in_use` gives the digests running sessions boot from: remove() refuses to
    delete those (409) and prune() keeps them. It is called on the event loop."""

    def __init__(self, settings: Settings, store: ImageStore | None = None, *,
                 in_use: Callable[[], set[str]] = _no_images_in_use) -> None:
        self.settings = settings
        self._store = store
        self._in_use = in_use

    @property
    def store(self) -> ImageStore:
        if self._store is None:
            self._store = ImageStore(self.settings)
        return self._store

    async def resolve(self, ref: str | None, *, runtime: Runtime) -> ResolvedImage:
        canonical = check_image_ref(ref)
        if canonical == DEFAULT_IMAGE and not await self.store.has(DEFAULT_IMAGE):
            # `make setup` imports chaser/base into the store; until then the guest
            # builder's erofs of the very same root file system serves.
            disk = runtime.base_image_disk
            return ResolvedImage(reference=DEFAULT_IMAGE, digest="", disk=disk, config=NO_CONFIG,
                                 size_bytes=await asyncio.to_thread(_size_or_zero, disk))
        return await self.store.resolve(None if canonical == DEFAULT_IMAGE else canonical)

    async def list_images(self) -> list[ImageRow]:
        """One row per (ref, image) in the store."""
        return await self.store.list()

    async def pull(self, ref: str) -> ResolvedImage:
        """Pull `ref` into the store (local sources are refused: InvalidImage)."""
        return await self.store.pull(check_image_ref(ref))

    async def prune(self, budget_bytes: int | None = None) -> list[str]:
        """Delete unused images beyond `budget_bytes` (default: the setting); returns their digests."""
        return await self.store.prune(budget_bytes=budget_bytes, in_use=self._in_use())

    async def remove(self, ref: str) -> list[str]:
        """Remove a ref or a digest; Conflict while a session uses the image."""
        return await self.store.remove(ref, in_use=self._in_use())


def _size_or_zero(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0
