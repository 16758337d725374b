"""Image references → root-filesystem disks. The images feature plugs in here."""

from __future__ import annotations

from pathlib import Path

from chaser import errors

DEFAULT_IMAGE = "chaser/base"
_DEFAULT_ALIASES = {DEFAULT_IMAGE, f"{DEFAULT_IMAGE}:latest"}


def check_image_ref(ref: str | None) -> str:
    """Validate a reference without touching disks; returns its canonical form."""
    if ref is None or ref.strip() == "" or ref.strip() in _DEFAULT_ALIASES:
        return DEFAULT_IMAGE
    raise errors.InvalidImage(
        f"image {ref!r} is not available: image pulling is not available yet; use {DEFAULT_IMAGE!r} or omit image"
    )


async def resolve_image(ref: str | None, *, runtime) -> Path:
    """The erofs disk for `ref` (None = the default image)."""
    check_image_ref(ref)
    return runtime.assets.base_rootfs
