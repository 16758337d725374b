"""The image store: OCI reference → cached erofs root file system.

Layout of `settings.images_dir`:

    sha256/<hex>/            one entry per manifest digest (immutable once renamed in)
        rootfs.erofs         the sandbox root (vdb)
        config.json          the OCI image config, as pulled
        manifest.json        the OCI manifest, as stored in the layout
        meta.json            digest, source, sizes, timings
        last_used            its mtime is the last resolve
    base/<key>/layout/       OCI layout of `chaser/base` (key = sha256 of the tarball)
    refs.json                {"refs": {normalised ref: digest}, "aliases": {index digest: digest}}
    .locks/                  flock files (per digest, "base", "refs")
    .skopeo/                 skopeo's temp dir (empty between operations)
    .tmp-<lock>-<rand>/      work dirs of builds in progress (removed on failure)

The parts: `entries` (the sha256/ entries), `refs` (refs.json), `locks`,
`build` (pull → unpack → convert), `resolve` (reference → entry), `gc` (remove,
prune). `ImageStore` is the facade the server uses: every method is a
coroutine, and the file system work runs in worker threads, never on the event
loop. `BlockingImageStore` offers the same for a process without an event loop
(the admin CLI on the server's machine).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from chaser.images.build import Builder
from chaser.images.entries import Entries
from chaser.images.gc import Collector, InUse, in_use_set
from chaser.images.locks import FileLocks
from chaser.images.progress import Progress, ProgressFn
from chaser.images.pull import Skopeo
from chaser.images.reference import is_default, normalize
from chaser.images.refs import RefIndex
from chaser.images.resolve import ResolvedImage, Resolver

if TYPE_CHECKING:
    from chaser.config import Settings

__all__ = ["BlockingImageStore", "ImageRow", "ImageStore", "Progress", "ProgressFn", "ResolvedImage"]


class ImageRow(TypedDict):
    """One row of `list()`: a (ref, image) pair; ref None for an image no ref points to."""

    ref: str | None
    digest: str
    size: int
    last_used: str | None
    created: str | None


class ImageStore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = Path(settings.images_dir)
        self.locks = FileLocks(self.root / ".locks")
        self.entries = Entries(self.root)
        self.refs = RefIndex(self.root, self.locks, self.entries)
        self.skopeo = Skopeo(settings, self.root / ".skopeo")
        # Counters for tests and diagnostics: builds done and resolves answered by this instance.
        self.stats: dict[str, int] = {"builds": 0, "hits": 0}
        self.builder = Builder(settings, self.entries, self.locks, self.skopeo, self.stats)
        self.resolver = Resolver(settings, self.entries, self.refs, self.locks, self.skopeo, self.builder,
                                 self.stats)
        self.collector = Collector(settings, self.entries, self.refs, self.locks)
        self.blocking = BlockingImageStore(self)

    @property
    def entries_dir(self) -> Path:
        return self.entries.dir

    @property
    def base_dir(self) -> Path:
        return self.builder.base_dir

    @property
    def last_timings(self) -> dict[str, float]:
        """Stage durations of this instance's last build or import."""
        return self.builder.last_timings

    def entry_dir(self, digest: str) -> Path:
        return self.entries.path(digest)

    async def resolve(self, ref: str | None, *, progress: ProgressFn = None,
                      allow_local: bool | None = None) -> ResolvedImage:
        """The disk for `ref` (None / "chaser/base" → the default image), pulling
        and converting it if needed. A tag is re-resolved on every call (one
        `skopeo inspect`); when the registry cannot be reached, a tag already
        in the cache is used as is."""
        if ref is None or is_default(ref):
            return await self.resolver.resolve_default(progress)
        return await self.resolver.resolve(self.resolver.parse(ref, allow_local), progress, offline_ok=True)

    async def pull(self, ref: str, *, progress: ProgressFn = None, allow_local: bool | None = None) -> ResolvedImage:
        """Like resolve(), but a registry failure is always an error."""
        if is_default(ref):
            return await self.resolver.resolve_default(progress)
        return await self.resolver.resolve(self.resolver.parse(ref, allow_local), progress, offline_ok=False)

    async def has(self, ref: str) -> bool:
        """Whether `ref` (a name) is in the store, without touching a registry."""
        return await asyncio.to_thread(self.blocking.has, ref)

    async def remove(self, ref: str, *, in_use: InUse | None = None) -> list[str]:
        """See `Collector.remove`. `in_use` is read here, on the event loop."""
        return await asyncio.to_thread(self.collector.remove, ref, in_use=in_use_set(in_use))

    async def prune(self, *, budget_bytes: int | None = None, in_use: InUse | None = None) -> list[str]:
        """See `Collector.prune`. `in_use` is read here, on the event loop."""
        return await asyncio.to_thread(self.collector.prune, budget_bytes=budget_bytes, in_use=in_use_set(in_use))

    # Last: below this line `list` names the method, not the builtin.
    async def list(self) -> list[ImageRow]:
        """One row per (ref, image); images no ref points to have ref None."""
        return await asyncio.to_thread(self.blocking.list)


class BlockingImageStore:
    """ImageStore's operations for a caller without a running event loop; ImageStore
    runs the file system ones (`has`, `list`) in worker threads."""

    def __init__(self, store: ImageStore) -> None:
        self._store = store

    def pull(self, ref: str, *, progress: ProgressFn = None, allow_local: bool | None = None) -> ResolvedImage:
        return asyncio.run(self._store.pull(ref, progress=progress, allow_local=allow_local))

    def has(self, ref: str) -> bool:
        store = self._store
        digest = store.refs.lookup(normalize(ref))
        return digest is not None and store.entries.has(digest)

    def remove(self, ref: str, *, in_use: InUse | None = None) -> list[str]:
        return self._store.collector.remove(ref, in_use=in_use)

    def prune(self, *, budget_bytes: int | None = None, in_use: InUse | None = None) -> list[str]:
        return self._store.collector.prune(budget_bytes=budget_bytes, in_use=in_use)

    # Last, as in ImageStore.
    def list(self) -> list[ImageRow]:
        entries = self._store.entries
        by_digest: dict[str, list[str]] = {}
        for name, digest in self._store.refs.read()["refs"].items():
            by_digest.setdefault(digest, []).append(name)
        rows: list[ImageRow] = []
        for entry in entries.all():
            meta = entries.meta(entry)
            digest = entries.digest_of(entry, meta)
            last_used, created = _iso(entries.last_used(entry)), _iso(meta.get("created"))
            refs: list[str | None] = [*sorted(by_digest.get(digest, []))] or [None]
            for ref in refs:
                rows.append({"ref": ref, "digest": digest, "size": int(meta.get("size_bytes") or 0),
                             "last_used": last_used, "created": created})
        rows.sort(key=lambda r: (r["ref"] is None, r["ref"] or "", r["digest"]))
        return rows


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts else None
