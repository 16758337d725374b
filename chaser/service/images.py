"""Image references → the disk and config a session boots with."""

from __future__ import annotations

from chaser import errors
from chaser.images import DEFAULT_IMAGE, ImageConfig, ImageStore, ResolvedImage, normalize

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


class ImageService:
    """One image store per server process; sessions resolve images through it."""

    def __init__(self, settings, store: ImageStore | None = None) -> None:
        self.settings = settings
        self._store = store

    @property
    def store(self) -> ImageStore:
        if self._store is None:
            self._store = ImageStore(self.settings)
        return self._store

    async def resolve(self, ref: str | None, *, runtime) -> ResolvedImage:
        canonical = check_image_ref(ref)
        if canonical == DEFAULT_IMAGE and not self.store.has(DEFAULT_IMAGE):
            # `make setup` imports chaser/base into the store; until then the guest
            # builder's erofs of the very same root file system serves.
            disk = runtime.assets.base_rootfs
            return ResolvedImage(reference=DEFAULT_IMAGE, digest="", disk=disk, config=NO_CONFIG,
                                 size_bytes=disk.stat().st_size if disk.exists() else 0)
        return await self.store.resolve(None if canonical == DEFAULT_IMAGE else canonical)
