"""Deleting images: `remove` (one ref or digest) and `prune` (least recently used
first, down to a size budget), plus the leftovers of interrupted builds.

Blocking (file locks, tree removal): ImageStore runs these in worker threads,
the admin CLI calls them directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from chaser import errors
from chaser.images.entries import UNLOCKED_WORK, Entries, digest_hex
from chaser.images.locks import FileLocks
from chaser.images.reference import DEFAULT_IMAGE, DIGEST_RE, normalize
from chaser.images.refs import LOCK as REFS_LOCK
from chaser.images.refs import RefIndex, without
from chaser.images.unpack import remove_tree

if TYPE_CHECKING:
    from chaser.config import Settings

# prune() leaves alone images resolved this recently (a session may be about to use one).
RECENT_USE_GRACE_S = 60.0

InUse = Iterable[str] | Callable[[], Iterable[str]]


def in_use_set(in_use: InUse | None) -> frozenset[str]:
    if in_use is None:
        return frozenset()
    if callable(in_use):
        in_use = in_use()
    return frozenset(in_use)


class Collector:
    def __init__(self, settings: Settings, entries: Entries, refs: RefIndex, locks: FileLocks) -> None:
        self.settings = settings
        self.entries = entries
        self.refs = refs
        self.locks = locks

    def remove(self, ref: str, *, in_use: InUse | None = None) -> list[str]:
        """Remove a ref (a name or a digest). The image itself is deleted when
        no other ref points to it (a digest removes the image and all its refs).
        ImageNotFound if unknown; Conflict if the image is in use. Returns the
        digests deleted."""
        busy = in_use_set(in_use)
        ref = (ref or "").strip()
        name: str | None
        if DIGEST_RE.match(ref):
            digest, name = self.refs.known_digest(ref), None
            if digest is None:
                raise errors.ImageNotFound(f"image {ref} is not in the store")
        else:
            name = normalize(ref)
            digest = self.refs.lookup(name)
            if digest is None or not self.entries.has(digest):
                if digest is not None:
                    self.refs.update(drop_refs={name})
                raise errors.ImageNotFound(f"image {name} is not in the store")
        with self.locks.hold_sync(REFS_LOCK):
            data = self.refs.read()
            others = [n for n, d in data["refs"].items() if d == digest and n != name]
            if name is not None and others:
                del data["refs"][name]
                self.refs.write(data)
                return []
            if digest in busy:
                raise errors.Conflict(f"image {name or digest} is in use by a session")
            self.entries.delete(digest)
            self.refs.write(without(data, digest))
        return [digest]

    def prune(self, *, budget_bytes: int | None = None, in_use: InUse | None = None) -> list[str]:
        """Delete unused images, least recently used first, until the store
        fits `budget_bytes` (default settings.image_cache_budget_bytes). Images
        in use, the default image, images resolved in the last minute and
        images being built are kept. Also
        removes leftovers of interrupted builds. Returns the digests deleted."""
        busy = in_use_set(in_use)
        # The default image is the offline fallback: kept (remove() can still delete it).
        default = self.refs.lookup(DEFAULT_IMAGE)
        if default:
            busy |= {default}
        budget = self.settings.image_cache_budget_bytes if budget_bytes is None else budget_bytes
        self.clean_tmp()
        found: list[tuple[float, int, str]] = []
        for entry in self.entries.all():
            meta = self.entries.meta(entry)
            found.append((self.entries.last_used(entry) or 0.0, self.entries.size(entry, meta),
                          self.entries.digest_of(entry, meta)))
        total = sum(size for _, size, _ in found)
        removed: list[str] = []
        now = time.time()
        for last_used, size, digest in sorted(found):
            if total <= budget:
                break
            if digest in busy or now - last_used < RECENT_USE_GRACE_S:
                continue
            with self.locks.hold_sync(digest_hex(digest), blocking=False) as held:
                if not held or self._used_since(digest, now):
                    continue
                with self.locks.hold_sync(REFS_LOCK):
                    self.entries.delete(digest)
                    self.refs.write(without(self.refs.read(), digest))
            total -= size
            removed.append(digest)
        return removed

    def _used_since(self, digest: str, now: float) -> bool:
        """Resolved within the grace period after the scan (a resolve in this process runs
        concurrently with a prune in a worker thread)."""
        last_used = self.entries.last_used(self.entries.path(digest))
        return last_used is not None and now - last_used < RECENT_USE_GRACE_S

    def clean_tmp(self) -> None:
        """Remove work dirs of builds that are not running any more."""
        for path, lock_name in self.entries.work_dirs():
            if lock_name in UNLOCKED_WORK or lock_name.startswith("auth"):
                remove_tree(path)
                continue
            with self.locks.hold_sync(lock_name, blocking=False) as free:
                if free:
                    remove_tree(path)
