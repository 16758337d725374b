"""Debian root file systems made with mmdebstrap, turned into erofs images.

The tarball and the erofs image are cached separately: the tarball (slow,
network) is keyed by suite + package list; the erofs (fast) by the tarball
key + how the tree is adjusted. The base tarball is also kept for a later
OCI import.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from chaser.datadir import CONTENT_UMASK
from chaser.guest import cache
from chaser.guest.util import input_hash, run

SUITE = "bookworm"
# slirp's built-in DNS forwarder; erofs is read-only so it must be baked in.
RESOLV_CONF = "nameserver 10.0.2.3\n"


@dataclass(frozen=True)
class RootfsSpec:
    kind: str  # cache kind of the erofs entry ("os" / "base"); tarball is "<kind>-tar"
    image_name: str  # file name of the erofs image in its entry
    packages: tuple[str, ...]
    # Directories that must exist because erofs is read-only (mount points).
    dirs: tuple[str, ...] = field(default=("dev", "proc", "sys", "run", "tmp", "mnt"))

    @property
    def tar_key(self) -> str:
        return input_hash({"suite": SUITE, "variant": "minbase", "packages": sorted(self.packages)})

    @property
    def image_key(self) -> str:
        return input_hash({"tar": self.tar_key, "dirs": list(self.dirs), "resolv": RESOLV_CONF})


def tarball_entry(guest_dir: Path, spec: RootfsSpec) -> Path:
    return guest_dir / cache.entry_name(f"{spec.kind}-tar", spec.tar_key)


def image_entry(guest_dir: Path, spec: RootfsSpec) -> Path:
    return guest_dir / cache.entry_name(spec.kind, spec.image_key)


def ensure_tarball(guest_dir: Path, spec: RootfsSpec, progress=print) -> Path:
    def build(tmp: Path) -> None:
        progress(f"{spec.kind}: mmdebstrap {SUITE} (+{len(spec.packages)} packages)")
        # No mirror argument: use the host's apt sources. /dev nodes are skipped:
        # the VM mounts devtmpfs there (docs/architecture.md, "Facts").
        run([
            "mmdebstrap", "--quiet", "--variant=minbase", "--skip=output/dev",
            f"--include={','.join(spec.packages)}", SUITE, str(tmp / "rootfs.tar"),
        ], what=f"mmdebstrap ({spec.kind})", umask=CONTENT_UMASK)  # the guest's modes, not our private umask
        os.chmod(tmp / "rootfs.tar", 0o600)

    d, _ = cache.ensure_entry(guest_dir, f"{spec.kind}-tar", spec.tar_key, build)
    return d / "rootfs.tar"


def prepare_tree(tree: Path, spec: RootfsSpec) -> None:
    for d in spec.dirs:
        if not (tree / d).exists():
            (tree / d).mkdir(parents=True)
            os.chmod(tree / d, 0o755)  # not the private umask of the data directory
    os.chmod(tree / "tmp", 0o1777)
    if (tree / "var/tmp").is_dir():
        os.chmod(tree / "var/tmp", 0o1777)
    resolv = tree / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text(RESOLV_CONF)
    os.chmod(resolv, 0o644)


def ensure_image(guest_dir: Path, spec: RootfsSpec, progress=print) -> Path:
    tarball = ensure_tarball(guest_dir, spec, progress)

    def build(tmp: Path) -> None:
        progress(f"{spec.kind}: mkfs.erofs")
        with tempfile.TemporaryDirectory(prefix=f"{cache.TMP_PREFIX}tree-{spec.kind}-", dir=guest_dir) as t:
            tree = Path(t) / "tree"
            tree.mkdir()
            # As root with numeric owners so the image keeps Debian's ownership.
            run(["tar", "-xpf", str(tarball), "--numeric-owner", "-C", str(tree)], what="tar -x",
                umask=CONTENT_UMASK)
            prepare_tree(tree, spec)
            # Uncompressed: faster to read under TCG emulation.
            run(["mkfs.erofs", "--quiet", str(tmp / spec.image_name), str(tree)], what="mkfs.erofs")

    d, _ = cache.ensure_entry(guest_dir, spec.kind, spec.image_key, build)
    return d / spec.image_name
