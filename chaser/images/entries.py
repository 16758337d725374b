"""The store's entries on disk: `sha256/<hex>/`, one per manifest digest, and the
work dirs (`.tmp-<lock>-<rand>/`) builds and deletions use. Blocking file system
calls: async code runs these in worker threads."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from chaser import errors
from chaser.images.reference import DIGEST_RE
from chaser.images.unpack import remove_tree

ROOTFS = "rootfs.erofs"
TMP_PREFIX = ".tmp-"
# Work dirs with these lock names belong to no build: deletions in progress, skopeo's auth files.
UNLOCKED_WORK = ("del", "auth")


def digest_hex(digest: str) -> str:
    """The hex part of a sha256 digest (400 for anything else): names the entry and its lock."""
    if not DIGEST_RE.match(digest):
        raise errors.InvalidImage(f"invalid digest {digest!r}")
    return digest.split(":", 1)[1]


class Entries:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "sha256"

    def path(self, digest: str) -> Path:
        return self.dir / digest_hex(digest)

    def has(self, digest: str) -> bool:
        return (self.path(digest) / ROOTFS).is_file()

    def all(self) -> list[Path]:
        """Complete entries, in name order."""
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.iterdir() if p.is_dir() and (p / ROOTFS).is_file())

    @staticmethod
    def meta(entry: Path) -> dict[str, Any]:
        try:
            meta = json.loads((entry / "meta.json").read_text())
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    @staticmethod
    def digest_of(entry: Path, meta: dict[str, Any]) -> str:
        return str(meta.get("digest") or f"sha256:{entry.name}")

    @staticmethod
    def last_used(entry: Path) -> float | None:
        try:
            return (entry / "last_used").stat().st_mtime
        except OSError:
            return None

    @staticmethod
    def size(entry: Path, meta: dict[str, Any]) -> int:
        """The erofs size: as recorded, else as found on disk (0 if missing)."""
        recorded = meta.get("size_bytes")
        if recorded:
            return int(recorded)
        try:
            return (entry / ROOTFS).stat().st_size
        except OSError:
            return 0

    def touch(self, digest: str) -> None:
        """Mark the entry used now (prune keeps recently used entries)."""
        stamp = self.path(digest) / "last_used"
        try:
            os.utime(stamp)
        except FileNotFoundError:
            stamp.touch()

    def mkwork(self, lock_name: str) -> Path:
        """A fresh work dir; prune removes it once the lock `lock_name` is free."""
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{lock_name}-", dir=self.root))

    def install(self, built: Path, digest: str) -> None:
        """Rename a finished entry into place (the caller holds the digest's lock)."""
        os.chmod(built, 0o700)  # the data directory is private (chaser/datadir.py)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.rename(built, self.path(digest))

    def delete(self, digest: str) -> None:
        entry = self.path(digest)
        if not entry.exists():
            return
        # Rename first so the entry disappears atomically, then delete at leisure.
        trash = self.mkwork("del")
        os.rename(entry, trash / "x")
        remove_tree(trash)

    def work_dirs(self) -> list[tuple[Path, str]]:
        """(work dir, lock name) of every work dir, finished or not."""
        if not self.root.is_dir():
            return []
        return [(p, p.name[len(TMP_PREFIX):].rsplit("-", 1)[0])
                for p in self.root.iterdir() if p.name.startswith(TMP_PREFIX)]
