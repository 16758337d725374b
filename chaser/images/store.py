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

A build pulls into a fresh OCI layout in its work dir, scans and unpacks the
layers, makes the erofs, then renames the entry into place: nothing
half-written is ever visible under sha256/. Concurrent requests for one
digest build it once (asyncio lock in-process + flock across processes).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from chaser import errors
from chaser.images import base as base_image
from chaser.images.config import ImageConfig, image_config
from chaser.images.convert import make_erofs
from chaser.images.pull import Skopeo, Target, check_manifest, check_platform
from chaser.images.reference import DEFAULT_IMAGE, DIGEST_RE, Reference, is_default, normalize, parse
from chaser.images.unpack import ensure_dirs, read_blob, read_layout, remove_tree, scan_layers, umoci_unpack

log = logging.getLogger(__name__)

ROOTFS = "rootfs.erofs"
LAYOUT_TAG = "image"
TMP_PREFIX = ".tmp-"
# prune() leaves alone images resolved this recently (a session may be about to use one).
RECENT_USE_GRACE_S = 60.0

InUse = Iterable[str] | Callable[[], Iterable[str]]


@dataclass(frozen=True)
class ResolvedImage:
    reference: str  # normalised, e.g. docker.io/library/python:3.12
    digest: str  # manifest digest sha256:…
    disk: Path  # the erofs file
    config: ImageConfig
    size_bytes: int


@dataclass(frozen=True)
class Progress:
    """What `progress` callbacks receive; str() is a one-line message.
    stage: resolve | pull | verify | unpack | convert | done."""

    stage: str
    message: str
    current: int | None = None
    total: int | None = None

    def __str__(self) -> str:
        return self.message


ProgressFn = Callable[[Progress], Any] | None


def _emit(progress: ProgressFn, stage: str, message: str, current: int | None = None, total: int | None = None) -> None:
    if progress is None:
        return
    try:
        progress(Progress(stage, message, current, total))
    except Exception:  # a broken callback must not break a pull
        log.exception("image progress callback failed")


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat() if ts else None


def _in_use_set(in_use: InUse | None) -> frozenset[str]:
    if in_use is None:
        return frozenset()
    if callable(in_use):
        in_use = in_use()
    return frozenset(in_use)


class _Locks:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._async: dict[tuple[int, str], asyncio.Lock] = {}

    @asynccontextmanager
    async def hold(self, name: str):
        key = (id(asyncio.get_running_loop()), name)
        lock = self._async.setdefault(key, asyncio.Lock())
        async with lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir / f"{name}.lock", os.O_CREAT | os.O_RDWR, 0o644)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        await asyncio.sleep(0.05)
                yield
            finally:
                os.close(fd)

    @contextmanager
    def hold_sync(self, name: str, *, blocking: bool = True):
        """Yields True when held (always when blocking); False if busy."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / f"{name}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)


class ImageStore:
    def __init__(self, settings) -> None:
        self.settings = settings
        self.root = Path(settings.images_dir)
        self.entries_dir = self.root / "sha256"
        self.base_dir = self.root / "base"
        self.locks = _Locks(self.root / ".locks")
        self.skopeo = Skopeo(settings, self.root / ".skopeo")
        # Counters for tests and diagnostics: builds done by this instance.
        self.stats = {"builds": 0, "hits": 0}
        self.last_timings: dict[str, float] = {}

    # ------------------------------------------------------------------ paths

    @staticmethod
    def _hex(digest: str) -> str:
        if not DIGEST_RE.match(digest):
            raise errors.InvalidImage(f"invalid digest {digest!r}")
        return digest.split(":", 1)[1]

    def entry_dir(self, digest: str) -> Path:
        return self.entries_dir / self._hex(digest)

    def _has_entry(self, digest: str) -> bool:
        return (self.entry_dir(digest) / ROOTFS).is_file()

    # ------------------------------------------------------------------ public API

    async def resolve(self, ref: str | None, *, progress: ProgressFn = None,
                      allow_local: bool | None = None) -> ResolvedImage:
        """The disk for `ref` (None / "chaser/base" → the default image), pulling
        and converting it if needed. A tag is re-resolved on every call (one
        `skopeo inspect`); when the registry cannot be reached, a tag already
        in the cache is used as is."""
        if is_default(ref):
            return await self._resolve_default(progress)
        return await self._resolve(self._parse(ref, allow_local), progress, offline_ok=True)

    async def pull(self, ref: str, *, progress: ProgressFn = None, allow_local: bool | None = None) -> ResolvedImage:
        """Like resolve(), but a registry failure is always an error."""
        if is_default(ref):
            return await self._resolve_default(progress)
        return await self._resolve(self._parse(ref, allow_local), progress, offline_ok=False)

    def has(self, ref: str) -> bool:
        """Whether `ref` (a name) is in the store, without touching a registry."""
        digest = self._read_refs()["refs"].get(normalize(ref))
        return digest is not None and self._has_entry(digest)

    def list(self) -> list[dict[str, Any]]:
        """One row per (ref, image); images no ref points to have ref None."""
        refs = self._read_refs()["refs"]
        by_digest: dict[str, list[str]] = {}
        for name, digest in refs.items():
            by_digest.setdefault(digest, []).append(name)
        rows = []
        for entry in self._entries():
            meta = self._meta(entry)
            digest = meta.get("digest") or f"sha256:{entry.name}"
            row = {"digest": digest, "size": meta.get("size_bytes", 0),
                   "last_used": _iso(self._last_used(entry)), "created": _iso(meta.get("created"))}
            for name in sorted(by_digest.get(digest, [])) or [None]:
                rows.append({"ref": name, **row})
        rows.sort(key=lambda r: (r["ref"] is None, r["ref"] or "", r["digest"]))
        return rows

    def remove(self, ref: str, *, in_use: InUse | None = None) -> list[str]:
        """Remove a ref (a name or a digest). The image itself is deleted when
        no other ref points to it (a digest removes the image and all its refs).
        ImageNotFound if unknown; Conflict if the image is in use. Returns the
        digests deleted."""
        busy = _in_use_set(in_use)
        ref = (ref or "").strip()
        if DIGEST_RE.match(ref):
            digest, name = self._known_digest(ref), None
            if digest is None:
                raise errors.ImageNotFound(f"image {ref} is not in the store")
        else:
            name = normalize(ref)
            digest = self._read_refs()["refs"].get(name)
            if digest is None or not self._has_entry(digest):
                if digest is not None:
                    self._update_refs(drop_refs={name})
                raise errors.ImageNotFound(f"image {name} is not in the store")
        with self.locks.hold_sync("refs"):
            data = self._read_refs()
            others = [n for n, d in data["refs"].items() if d == digest and n != name]
            if name is not None and others:
                del data["refs"][name]
                self._write_refs(data)
                return []
            if digest in busy:
                raise errors.Conflict(f"image {name or digest} is in use by a session")
            self._delete_entry(digest)
            data["refs"] = {n: d for n, d in data["refs"].items() if d != digest}
            data["aliases"] = {a: d for a, d in data["aliases"].items() if d != digest}
            self._write_refs(data)
        return [digest]

    def prune(self, *, budget_bytes: int | None = None, in_use: InUse | None = None) -> list[str]:
        """Delete unused images, least recently used first, until the store
        fits `budget_bytes` (default settings.image_cache_budget_bytes). Images
        in use, the default image, images resolved in the last minute and
        images being built are kept. Also
        removes leftovers of interrupted builds. Returns the digests deleted."""
        busy = _in_use_set(in_use)
        # The default image is the offline fallback: kept (remove() can still delete it).
        default = self._read_refs()["refs"].get(DEFAULT_IMAGE)
        if default:
            busy |= {default}
        budget = self.settings.image_cache_budget_bytes if budget_bytes is None else budget_bytes
        self._clean_tmp()
        entries = []
        for entry in self._entries():
            meta = self._meta(entry)
            entries.append((self._last_used(entry) or 0.0, meta.get("size_bytes") or _size(entry / ROOTFS),
                            meta.get("digest") or f"sha256:{entry.name}"))
        total = sum(size for _, size, _ in entries)
        removed: list[str] = []
        now = time.time()
        for last_used, size, digest in sorted(entries):
            if total <= budget:
                break
            if digest in busy or now - last_used < RECENT_USE_GRACE_S:
                continue
            with self.locks.hold_sync(self._hex(digest), blocking=False) as held:
                if not held:
                    continue
                with self.locks.hold_sync("refs"):
                    self._delete_entry(digest)
                    data = self._read_refs()
                    data["refs"] = {n: d for n, d in data["refs"].items() if d != digest}
                    data["aliases"] = {a: d for a, d in data["aliases"].items() if d != digest}
                    self._write_refs(data)
            total -= size
            removed.append(digest)
        return removed

    # ------------------------------------------------------------------ resolution

    def _parse(self, ref: str, allow_local: bool | None) -> Reference:
        r = parse(ref)
        allowed = self.settings.images_allow_local_sources if allow_local is None else allow_local
        if r.is_local and not allowed:
            raise errors.InvalidImage(f"local image sources ({r.transport}:) are not enabled on this server")
        if r.is_local and not os.path.exists(r.path):
            raise errors.ImageNotFound(f"image {r.normalized()} not found: {r.path} does not exist")
        return r

    async def _resolve(self, r: Reference, progress: ProgressFn, *, offline_ok: bool) -> ResolvedImage:
        name = r.normalized()
        if r.transport == "docker" and r.digest:
            known = self._known_digest(r.digest)
            if known:
                return self._hit(name, known, progress)
        _emit(progress, "resolve", f"resolving {name}")
        try:
            target = await self.skopeo.resolve(r)
        except errors.ImagePullFailed:
            cached = self._read_refs()["refs"].get(name)
            if offline_ok and cached and self._has_entry(cached):
                log.warning("registry unreachable for %s; using the cached %s", name, cached)
                return self._hit(name, cached, progress)
            raise
        if not self._has_entry(target.digest):
            async with self.locks.hold(self._hex(target.digest)):
                if not self._has_entry(target.digest):
                    if target.manifest is not None:
                        check_manifest(target.manifest, name, self.settings.image_max_bytes)
                        if r.transport == "docker":
                            check_platform(await self.skopeo.config(r, target), name)
                    await self._build(r, target, name, progress)
        return self._hit(name, target.digest, progress, alias=target.index_digest)

    async def _resolve_default(self, progress: ProgressFn) -> ResolvedImage:
        tar = base_image.find_base_tarball(self.settings)
        async with self.locks.hold("base"):
            # Under the lock: the tarball is hashed once (then memoised by its stat).
            key = await asyncio.to_thread(base_image.content_key, tar, self.base_dir)
            entry = self.base_dir / key[:32]
            layout = entry / "layout"
            if not (layout / "index.json").is_file():
                _emit(progress, "pull", f"importing the default image from {tar}")
                t0 = time.monotonic()
                work = self._mkwork("base")
                try:
                    await base_image.build_layout(tar, work / "x" / "layout", work)
                    os.chmod(work / "x", 0o755)
                    self.base_dir.mkdir(parents=True, exist_ok=True)
                    os.rename(work / "x", entry)
                finally:
                    await asyncio.to_thread(remove_tree, work)
                self.last_timings = {"import_s": time.monotonic() - t0}
                for old in self.base_dir.iterdir():
                    if old.is_dir() and old.name != entry.name:
                        await asyncio.to_thread(remove_tree, old)
        digest, manifest, _ = read_layout(layout, base_image.TAG)
        if not self._has_entry(digest):
            async with self.locks.hold(self._hex(digest)):
                if not self._has_entry(digest):
                    r = Reference(transport="oci", path=str(layout), tag=base_image.TAG)
                    target = Target(digest=digest, manifest=manifest, copy_source=r.skopeo())
                    await self._build(r, target, DEFAULT_IMAGE, progress, max_bytes=None)
        return self._hit(DEFAULT_IMAGE, digest, progress)

    def _hit(self, name: str, digest: str, progress: ProgressFn, *, alias: str | None = None) -> ResolvedImage:
        entry = self.entry_dir(digest)
        self._update_refs(set_refs={name: digest}, aliases={alias: digest} if alias else None)
        try:
            os.utime(entry / "last_used")
        except FileNotFoundError:
            (entry / "last_used").touch()
        meta = self._meta(entry)
        config = json.loads((entry / "config.json").read_text())
        disk = entry / ROOTFS
        self.stats["hits"] += 1
        _emit(progress, "done", f"{name} → {digest[:19]}")
        return ResolvedImage(reference=name, digest=digest, disk=disk, config=image_config(config),
                             size_bytes=int(meta.get("size_bytes") or disk.stat().st_size))

    # ------------------------------------------------------------------ building

    def _mkwork(self, lock_name: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{lock_name}-", dir=self.root))

    async def _build(self, r: Reference, target: Target, name: str, progress: ProgressFn,
                     *, max_bytes: int | None | bool = True) -> None:
        """Pull, scan, unpack, convert; rename the entry into place. Caller holds the digest lock."""
        if max_bytes is True:
            max_bytes = self.settings.image_max_bytes
        hexd = self._hex(target.digest)
        slot = self.settings.image_slot_bytes
        work = self._mkwork(hexd)
        timings: dict[str, float] = {}
        try:
            layout = work / "oci"
            total = len(target.manifest.get("layers") or []) if target.manifest else None
            copied = 0
            _emit(progress, "pull", f"pulling {name}", 0, total)

            def on_line(line: str) -> None:
                nonlocal copied
                if line.startswith("Copying blob"):
                    copied += 1
                    _emit(progress, "pull", f"pulling {name}: layer {copied}/{total or '?'}", copied, total)

            t0 = time.monotonic()
            await self.skopeo.copy(r, target.copy_source, layout, LAYOUT_TAG, on_line=on_line)
            timings["pull_s"] = time.monotonic() - t0
            layout_digest, manifest, config = read_layout(layout, LAYOUT_TAG)
            compressed = check_manifest(manifest, name, max_bytes)
            check_platform(config, name)
            image_config(config)  # reject malformed Env/WorkingDir/User now, not at session start

            n = len(manifest["layers"])
            _emit(progress, "verify", f"checking {n} layer(s)", 0, n)
            t0 = time.monotonic()
            unpacked = await asyncio.to_thread(
                scan_layers, layout, manifest, max_unpacked=slot,
                progress=lambda i, k: _emit(progress, "verify", f"checked layer {i}/{k}", i, k))
            timings["verify_s"] = time.monotonic() - t0

            _emit(progress, "unpack", f"unpacking {n} layer(s)")
            t0 = time.monotonic()
            rootfs = work / "rootfs"
            await umoci_unpack(layout, LAYOUT_TAG, rootfs)
            await asyncio.to_thread(ensure_dirs, rootfs)
            timings["unpack_s"] = time.monotonic() - t0

            _emit(progress, "convert", "making the erofs disk")
            t0 = time.monotonic()
            out = work / "entry"
            out.mkdir()
            size = await make_erofs(rootfs, out / ROOTFS, max_bytes=slot)
            timings["convert_s"] = time.monotonic() - t0

            (out / "config.json").write_bytes(read_blob(layout, manifest["config"]["digest"]))
            (out / "manifest.json").write_bytes(read_blob(layout, layout_digest))
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
            (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            (out / "last_used").touch()
            os.chmod(out, 0o755)
            self.entries_dir.mkdir(parents=True, exist_ok=True)
            os.rename(out, self.entries_dir / hexd)
            self.stats["builds"] += 1
            self.last_timings = timings
        except OSError as exc:  # disk full, permissions… while writing our own files
            raise errors.ImageConversionFailed(f"building the image {name} failed on this host: {exc}") from exc
        finally:
            await asyncio.to_thread(remove_tree, work)

    # ------------------------------------------------------------------ bookkeeping

    def _entries(self) -> list[Path]:
        if not self.entries_dir.is_dir():
            return []
        return sorted(p for p in self.entries_dir.iterdir() if p.is_dir() and (p / ROOTFS).is_file())

    @staticmethod
    def _meta(entry: Path) -> dict[str, Any]:
        try:
            return json.loads((entry / "meta.json").read_text())
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _last_used(entry: Path) -> float | None:
        try:
            return (entry / "last_used").stat().st_mtime
        except OSError:
            return None

    def _known_digest(self, digest: str) -> str | None:
        """The entry digest for `digest` (an entry's own or an index's)."""
        if self._has_entry(digest):
            return digest
        alias = self._read_refs()["aliases"].get(digest)
        return alias if alias and self._has_entry(alias) else None

    def _read_refs(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads((self.root / "refs.json").read_text())
        except (OSError, ValueError):
            data = {}
        return {"refs": dict(data.get("refs") or {}), "aliases": dict(data.get("aliases") or {})}

    def _write_refs(self, data: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".refs.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.root / "refs.json")

    def _update_refs(self, *, set_refs: dict[str, str] | None = None, aliases: dict[str, str] | None = None,
                     drop_refs: set[str] | None = None) -> None:
        with self.locks.hold_sync("refs"):
            data = self._read_refs()
            new = dict(data["refs"])
            new.update(set_refs or {})
            for n in drop_refs or ():
                new.pop(n, None)
            new_aliases = {**data["aliases"], **(aliases or {})}
            if new != data["refs"] or new_aliases != data["aliases"]:
                self._write_refs({"refs": new, "aliases": new_aliases})

    def _delete_entry(self, digest: str) -> None:
        entry = self.entry_dir(digest)
        if not entry.exists():
            return
        # Rename first so the entry disappears atomically, then delete at leisure.
        trash = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}del-", dir=self.root))
        os.rename(entry, trash / "x")
        remove_tree(trash)

    def _clean_tmp(self) -> None:
        """Remove work dirs of builds that are not running any more."""
        if not self.root.is_dir():
            return
        for p in self.root.iterdir():
            if not p.name.startswith(TMP_PREFIX):
                continue
            lock_name = p.name[len(TMP_PREFIX):].rsplit("-", 1)[0]
            if lock_name in ("del", "auth") or lock_name.startswith("auth"):
                remove_tree(p)
                continue
            with self.locks.hold_sync(lock_name, blocking=False) as free:
                if free:
                    remove_tree(p)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
