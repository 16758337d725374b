"""OCI images → erofs root file systems for sandbox sessions (docs/images.md)."""

from chaser.images.config import ImageConfig
from chaser.images.reference import DEFAULT_IMAGE, normalize
from chaser.images.store import BlockingImageStore, ImageRow, ImageStore, Progress, ResolvedImage

__all__ = ["DEFAULT_IMAGE", "BlockingImageStore", "ImageConfig", "ImageRow", "ImageStore", "Progress",
           "ResolvedImage", "normalize"]
