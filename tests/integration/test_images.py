"""The image store against real tools: docker-registry, skopeo, umoci, mkfs.erofs.

No mocks: images are built with umoci + GNU tar, pushed to loopback
registries, pulled, unpacked and checked inside the erofs (mounted read-only
when the host kernel can, else extracted with fsck.erofs)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from chaser import errors
from chaser.config import Settings
from chaser.images import ImageStore
from chaser.images.unpack import REQUIRED_DIRS
from tests.integration.registry import (
    Registry,
    build_feature_image,
    build_tiny_image,
    hostile_tar,
    run,
    umoci_image,
)

# `make setup` installs skopeo, umoci, erofs-utils, docker-registry and apache2-utils; tests run as root.


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="module")
def reg(work):
    r = Registry(work).start()
    yield r
    r.cleanup()


@pytest.fixture(scope="module")
def areg(work):
    r = Registry(work, auth=("user", "s3cret")).start()
    yield r
    r.cleanup()


@pytest.fixture(scope="module")
def feature(work, reg, areg):
    """The multi-layer feature image: (layout, digest, ref on reg, ref on areg)."""
    layout = work / "feature-layout"
    digest = build_feature_image(work / "feature-src", layout, "v1")
    return layout, digest, reg.push(layout, "v1", "feat"), areg.push(layout, "v1", "private/feat")


def make_settings(tmp_path: Path, *hosts: str, **kw) -> Settings:
    return Settings(home=tmp_path / "home", registries_insecure=list(hosts), **kw)


@pytest.fixture
def store(tmp_path, reg, areg) -> ImageStore:
    return ImageStore(make_settings(tmp_path, reg.host, areg.host))


@contextmanager
def erofs_tree(disk: Path):
    """(tree, exact): the image mounted read-only, or extracted (exact=False:
    fsck.erofs 1.5 extraction loses setuid bits and hard links)."""
    mnt = Path(tempfile.mkdtemp(prefix="erofs-mnt-"))
    mounted = subprocess.run(["mount", "-o", "loop,ro", "-t", "erofs", str(disk), str(mnt)],
                             capture_output=True).returncode == 0
    try:
        if not mounted:
            run(["fsck.erofs", f"--extract={mnt / 'x'}", str(disk)])
            yield mnt / "x", False
        else:
            yield mnt, True
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=True)
        shutil.rmtree(mnt, ignore_errors=True)


def leftovers(images_dir: Path) -> list[str]:
    """Anything in the store besides completed entries and bookkeeping."""
    bad = []
    for p in images_dir.iterdir() if images_dir.exists() else []:
        if p.name in ("refs.json", ".locks"):
            continue
        if p.name == ".skopeo" and not any(p.iterdir()):
            continue
        if p.name == "sha256" and all((e / "rootfs.erofs").is_file() and (e / "meta.json").is_file()
                                      for e in p.iterdir()):
            continue
        bad.append(p.name)
    return bad


def push_layers(work: Path, reg: Registry, name: str, layers: list[Path], **kw) -> tuple[str, str]:
    layout = work / f"layout-{name.replace('/', '-')}-{uuid.uuid4().hex[:6]}"
    digest = umoci_image(layout, "t", layers, **kw)
    return reg.push(layout, "t", name), digest


# --------------------------------------------------------------------------- pulling


async def test_pull_by_tag_unpacks_everything(store, feature):
    _, digest, ref, _ = feature
    img = await store.resolve(ref)
    assert img.reference == ref and img.digest == digest
    assert img.disk.is_file() and img.size_bytes == img.disk.stat().st_size
    assert img.disk == store.root / "sha256" / digest.split(":")[1] / "rootfs.erofs"
    assert img.config.env == {"FOO": "bar", "PATH": "/usr/bin:/bin"}
    assert img.config.workdir == "/home/app" and img.config.user == "app"
    cfg = json.loads((img.disk.parent / "config.json").read_text())
    assert cfg["config"]["Entrypoint"] == ["/bin/sh"]  # kept in config.json, unused by sessions

    with erofs_tree(img.disk) as (tree, exact):
        assert (tree / "marker").read_text() == "one\n"
        assert (tree / "etc/motd").read_text() == "layer three\n"
        assert not (tree / "gone").exists() and not (tree / ".wh.gone").exists()  # whiteout
        assert sorted(os.listdir(tree / "opaque")) == ["new"]  # opaque dir
        assert os.readlink(tree / "data/sym") == "/data/orig"
        assert os.readlink(tree / "bin/sh") == "busybox"
        assert os.stat(tree / "bin/busybox").st_mode & 0o111
        assert os.lstat(tree / "owned").st_uid == 1000 and os.lstat(tree / "home/app").st_gid == 1000
        assert "app:x:1000:1000" in (tree / "etc/passwd").read_text()
        for name in REQUIRED_DIRS:
            assert stat.S_ISDIR(os.lstat(tree / name).st_mode), name
        assert stat.S_IMODE(os.stat(tree / "tmp").st_mode) == 0o1777
        if exact:
            assert os.stat(tree / "bin/suid").st_mode & stat.S_ISUID
            a, b = os.stat(tree / "data/orig"), os.stat(tree / "data/link")
            assert a.st_ino == b.st_ino and a.st_nlink == 2
    assert leftovers(store.root) == []


async def test_second_resolve_is_a_cache_hit(store, feature):
    _, digest, ref, _ = feature
    first = await store.resolve(ref)
    mtime = first.disk.stat().st_mtime_ns
    second = await store.resolve(ref)
    assert second == first
    assert store.skopeo.calls["copy"] == 1 and store.stats["builds"] == 1
    assert first.disk.stat().st_mtime_ns == mtime
    # Pinned by digest: no registry access at all.
    pinned = ref.rsplit(":", 1)[0] + "@" + digest
    calls = dict(store.skopeo.calls)
    third = await store.resolve(pinned)
    assert third.digest == digest and third.reference == pinned and store.skopeo.calls == calls


async def test_pull_by_digest(store, feature):
    _, digest, ref, _ = feature
    pinned = ref.rsplit(":", 1)[0] + "@" + digest
    img = await store.pull(pinned)
    assert img.digest == digest and img.reference == pinned


async def test_tag_moved_is_re_resolved(tmp_path, store, reg, work):
    layout = work / "moving"
    d1 = build_tiny_image(work / "mv1", layout, "a", marker="first")
    ref = reg.push(layout, "a", "moving", dest_tag="latest")
    one = await store.resolve(ref)
    assert one.digest == d1
    d2 = build_tiny_image(work / "mv2", layout, "b", marker="second")
    reg.push(layout, "b", "moving", dest_tag="latest")
    two = await store.resolve(ref)
    assert two.digest == d2 != d1 and store.stats["builds"] == 2
    with erofs_tree(two.disk) as (tree, _):
        assert (tree / "marker").read_text() == "second\n"
    rows = await store.list()
    assert {r["digest"]: r["ref"] for r in rows} == {d2: ref, d1: None}


async def test_concurrent_resolves_pull_once(tmp_path, store, feature):
    _, digest, ref, _ = feature
    results = await asyncio.gather(*(store.resolve(ref) for _ in range(4)))
    assert {r.digest for r in results} == {digest}
    assert store.skopeo.calls["copy"] == 1 and store.stats["builds"] == 1
    # Two stores (as two processes would) on one directory: still one build.
    fresh = make_settings(tmp_path / "two", *store.settings.registries_insecure)
    a, b = ImageStore(fresh), ImageStore(fresh)
    await asyncio.gather(a.resolve(ref), b.resolve(ref), a.resolve(ref), b.resolve(ref))
    assert a.stats["builds"] + b.stats["builds"] == 1


@pytest.mark.parametrize("ref", [
    "UPPER/case", "foo:bad tag", "foo:-x", "name@sha256:1234", "a//b", "http://x/y", ":tag", "x/", "",
])
async def test_bad_references(store, ref):
    if ref == "":
        return  # the empty reference means the default image (tested below)
    with pytest.raises(errors.InvalidImage) as ei:
        await store.resolve(ref)
    assert ei.value.status == 400 and ei.value.code == "invalid_image"


async def test_local_sources_need_permission(store, feature):
    layout, *_ = feature
    with pytest.raises(errors.InvalidImage, match="not enabled"):
        await store.resolve(f"oci:{layout}:v1")


async def test_missing_image_is_404(store, reg, feature):
    for ref in (f"{reg.host}/nope:v1", f"{reg.host}/feat:nope", f"{reg.host}/feat@sha256:{'0' * 64}"):
        with pytest.raises(errors.ImageNotFound) as ei:
            await store.resolve(ref)
        assert ei.value.status == 404
    assert leftovers(store.root) == []


async def test_registry_down_is_502_and_leaves_nothing(tmp_path, work, feature):
    layout, digest, _, _ = feature
    down = Registry(work).start()
    try:
        ref = down.push(layout, "v1", "feat")
        store = ImageStore(make_settings(tmp_path, down.host))
        cached = await store.resolve(ref)
        other = down.push(layout, "v1", "feat", dest_tag="other")
    finally:
        down.stop()
    with pytest.raises(errors.ImagePullFailed) as ei:
        await store.resolve(other)
    assert ei.value.status == 502 and "connection refused" in ei.value.message
    # A cached tag still resolves (offline), but an explicit pull reports the failure.
    assert (await store.resolve(ref)).digest == cached.digest == digest
    with pytest.raises(errors.ImagePullFailed):
        await store.pull(ref)
    assert leftovers(store.root) == []
    down.cleanup()


async def test_loopback_registry_over_plain_http_needs_no_setting(tmp_path, reg, feature):
    """As with Docker, a registry on 127.0.0.0/8, ::1 or `localhost` is reached over plain HTTP
    without being listed in CHASER_REGISTRIES_INSECURE."""
    _, digest, ref, _ = feature
    store = ImageStore(make_settings(tmp_path))  # nothing listed as insecure
    assert (await store.resolve(ref)).digest == digest
    by_name = ref.replace("127.0.0.1:", "localhost:", 1)
    assert by_name.startswith(f"localhost:{reg.port}/")
    assert (await store.resolve(by_name)).digest == digest


async def test_registries_conf_drop_in_insecure_is_honoured(tmp_path, reg, feature, monkeypatch):
    """`insecure = true` in a registries.conf.d drop-in is skopeo's to apply: we pass no
    --tls-verify flag for a registry that is neither listed nor on loopback.

    Honest set-up without leaving the machine: the registry is addressed by a name that is not
    loopback (`registry.example.test`, never resolved) and the drop-in maps that prefix to the
    plain-HTTP registry on 127.0.0.1 (`location`). The drop-in sits in the per-user directory
    `$HOME/.config/containers/registries.conf.d/` (HOME is a temp dir for this test), which skopeo
    reads besides /etc/containers/registries.conf.d/, so the host's own configuration is not
    touched. Without `insecure = true` the same pull fails with skopeo's HTTPS error; with it, it
    succeeds: the drop-in is what decides."""
    _, digest, _, _ = feature
    home = tmp_path / "home-dir"
    drop_in = home / ".config" / "containers" / "registries.conf.d" / "50-chaser-test.conf"
    drop_in.parent.mkdir(parents=True)
    entry = f'[[registry]]\nprefix = "registry.example.test"\nlocation = "{reg.host}"\n'
    monkeypatch.setenv("HOME", str(home))
    store = ImageStore(make_settings(tmp_path))  # nothing listed as insecure

    drop_in.write_text(entry)
    with pytest.raises(errors.ImagePullFailed, match="HTTP response to HTTPS client"):
        await store.resolve("registry.example.test/feat:v1")
    drop_in.write_text(entry + "insecure = true\n")
    img = await store.resolve("registry.example.test/feat:v1")
    assert img.digest == digest and img.reference == "registry.example.test/feat:v1"
    assert leftovers(store.root) == []


async def test_auth_registry(tmp_path, areg, feature, monkeypatch):
    _, digest, _, ref = feature
    anon = ImageStore(make_settings(tmp_path / "a", areg.host))
    with pytest.raises(errors.ImagePullFailed, match="unauthorized") as ei:
        await anon.resolve(ref)
    assert ei.value.status == 502
    wrong = ImageStore(make_settings(tmp_path / "b", areg.host, registry_credentials={areg.host: "user:nope"}))
    with pytest.raises(errors.ImagePullFailed, match="unauthorized"):
        await wrong.resolve(ref)
    good = ImageStore(make_settings(tmp_path / "c", areg.host, registry_credentials={areg.host: "user:s3cret"}))
    assert (await good.resolve(ref)).digest == digest
    assert not list((good.root / ".skopeo").iterdir())  # temp auth file removed

    auth = tmp_path / "auth.json"
    import base64
    auth.write_text(json.dumps({"auths": {areg.host: {"auth": base64.b64encode(b"user:s3cret").decode()}}}))
    via_file = ImageStore(make_settings(tmp_path / "d", areg.host, registry_auth_file=auth))
    assert (await via_file.resolve(ref)).digest == digest
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
    via_env = ImageStore(make_settings(tmp_path / "e", areg.host))
    assert (await via_env.resolve(ref)).digest == digest


@pytest.mark.parametrize("kind,match", [
    ("dotdot", "'../evil'"), ("absolute", "'/abs-evil'"), ("hardlink", "hard link 'hl'"),
])
async def test_hostile_layers_are_rejected(tmp_path, store, reg, work, kind, match):
    base = work / "feature-src" / "tiny-hostile.tar"
    if not base.exists():
        from tests.integration.registry import busybox_tree, gnu_tar
        gnu_tar(busybox_tree(work / "hostile-base"), base)
    bad = hostile_tar(tmp_path / f"{kind}.tar", kind)
    ref, _ = push_layers(work, reg, f"hostile-{kind}", [base, bad])
    with pytest.raises(errors.InvalidImage, match=match) as ei:
        await store.resolve(ref)
    assert ei.value.status == 400 and "layer 2" in ei.value.message
    assert not (store.root.parent / "evil").exists() and not Path("/abs-evil").exists()
    assert not (tmp_path / "x").exists()
    assert leftovers(store.root) == [] and not await store.list()


async def test_no_write_through_a_symlink(tmp_path, store, reg, work):
    bad = hostile_tar(tmp_path / "sym.tar", "symlink-write")
    outside = tmp_path / "outside"
    ref, _ = push_layers(work, reg, "symwrite", [bad])
    img = await store.resolve(ref)  # the layer is legal; umoci keeps the write inside the rootfs
    assert not outside.exists()
    with erofs_tree(img.disk) as (tree, _):
        assert os.readlink(tree / "esc") == str(outside)
        assert (tree / str(outside).lstrip("/") / "pwned").read_text() == "evil\n"


async def test_image_over_the_size_limit_is_413(tmp_path, reg, feature):
    _, _, ref, _ = feature
    store = ImageStore(make_settings(tmp_path, reg.host, image_max_bytes=10_000))
    with pytest.raises(errors.PayloadTooLarge) as ei:
        await store.resolve(ref)
    assert ei.value.status == 413 and store.skopeo.calls["copy"] == 0
    assert leftovers(store.root) == []


async def test_non_amd64_image_is_400(tmp_path, store, reg, work):
    layout = work / "arm"
    build_tiny_image(work / "arm-src", layout, "arm", arch="arm64")
    ref = reg.push(layout, "arm", "arm")
    with pytest.raises(errors.InvalidImage, match="arm64") as ei:
        await store.resolve(ref)
    assert ei.value.status == 400 and store.skopeo.calls["copy"] == 0


async def test_local_sources(tmp_path, work, feature):
    layout, digest, _, _ = feature
    store = ImageStore(make_settings(tmp_path, images_allow_local_sources=True))
    oci = await store.resolve(f"oci:{layout}:v1")
    assert oci.digest == digest and oci.reference == f"oci:{layout}:v1"

    archive = tmp_path / "img.tar"
    run(["skopeo", "--insecure-policy", "copy", "--quiet", f"oci:{layout}:v1", f"oci-archive:{archive}:v1"])
    img = await store.resolve(f"oci-archive:{archive}:v1")
    assert img.digest == digest  # oci-archive keeps the digest: the same entry
    assert store.stats["builds"] == 1

    darchive = tmp_path / "docker.tar"
    run(["skopeo", "--insecure-policy", "copy", "--quiet", f"oci:{layout}:v1",
         f"docker-archive:{darchive}:example.com/feat:v1"])
    dimg = await store.resolve(f"docker-archive:{darchive}")
    assert dimg.digest != digest and store.stats["builds"] == 2  # docker-archive changes the digest
    assert dimg.config.env["FOO"] == "bar" and dimg.config.user == "app"
    with erofs_tree(dimg.disk) as (tree, _):
        assert (tree / "marker").read_text() == "one\n" and sorted(os.listdir(tree / "opaque")) == ["new"]
    again = await store.resolve(f"docker-archive:{darchive}")  # stable digest → cache hit
    assert again.digest == dimg.digest and store.stats["builds"] == 2

    with pytest.raises(errors.ImageNotFound):
        await store.resolve(f"oci-archive:{tmp_path}/missing.tar")


async def test_list_remove_prune(tmp_path, store, reg, work, feature):
    _, fdigest, fref, _ = feature
    layout = work / "lrp"
    build_tiny_image(work / "lrp-src", layout, "t", marker="lrp")
    tref = reg.push(layout, "t", "lrp")
    f = await store.resolve(fref)
    t = await store.resolve(tref)
    alias = fref.rsplit(":", 1)[0] + ":alias"
    reg.push(work / "feature-layout", "v1", "feat", dest_tag="alias")
    await store.resolve(alias)  # a second ref to the same image
    rows = await store.list()
    assert sorted((r["ref"], r["digest"]) for r in rows) == sorted(
        [(fref, fdigest), (alias, fdigest), (tref, t.digest)])
    assert all(r["size"] > 0 and r["last_used"] and r["created"] for r in rows)

    assert await store.remove(alias) == []  # untag only: fref still points to it
    assert f.disk.exists()
    with pytest.raises(errors.Conflict):
        await store.remove(fref, in_use={fdigest})
    with pytest.raises(errors.ImageNotFound):
        await store.remove(f"{reg.host}/never:seen")

    # prune: recent images are spared, then least recently used first within the budget.
    assert await store.prune(budget_bytes=0) == []
    past = time.time() - 3600
    os.utime(f.disk.parent / "last_used", (past - 10, past - 10))
    os.utime(t.disk.parent / "last_used", (past, past))
    assert await store.prune(budget_bytes=0, in_use={fdigest}) == [t.digest]
    assert await store.prune(budget_bytes=f.size_bytes) == []  # fits
    assert await store.prune(budget_bytes=0, in_use=lambda: set()) == [fdigest]
    assert await store.list() == [] and leftovers(store.root) == []

    again = await store.resolve(fref)  # pulled again after pruning
    assert await store.remove(fdigest) == [again.digest] and await store.list() == []


async def test_disk_full_fails_cleanly(tmp_path, reg, feature):
    _, _, ref, _ = feature
    home = tmp_path / "home"
    images = home / "images"
    images.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(images)], check=True)  # noqa: ASYNC221 - set-up
    try:
        store = ImageStore(make_settings(tmp_path, reg.host))
        with pytest.raises(errors.ChaserError) as ei:
            await store.resolve(ref)
        assert ei.value.status in (500, 502) and "no space left on device" in ei.value.message.lower()
        assert leftovers(images) == [] and await store.list() == []
    finally:
        subprocess.run(["umount", str(images)], check=True)  # noqa: ASYNC221 - tear-down


# --------------------------------------------------------------------------- the default image


def _base_settings(tmp_path: Path) -> Settings:
    real = Settings().guest_dir
    assert list(real.glob("base-tar-*/rootfs.tar")), "no base tarball: `make setup` builds it"
    home = tmp_path / "home"
    home.mkdir()
    (home / "guest").symlink_to(real)
    return Settings(home=home)


async def test_default_image(tmp_path, capsys):
    store = ImageStore(_base_settings(tmp_path))
    assert not await store.has("chaser/base")
    t0 = time.monotonic()
    img = await asyncio.gather(store.resolve(None), store.resolve("chaser/base"))
    assert await store.has("chaser/base") and await store.has("chaser/base:latest")
    elapsed = time.monotonic() - t0
    assert img[0] == img[1] and img[0].reference == "chaser/base" and store.stats["builds"] == 1
    meta = json.loads((img[0].disk.parent / "meta.json").read_text())
    with capsys.disabled():
        print(f"\n[default image] first resolve {elapsed:.1f}s, stages {meta['timings']}, "
              f"erofs {img[0].size_bytes / 1e6:.0f} MB")
    t0 = time.monotonic()
    again = await store.resolve(None)
    assert again.digest == img[0].digest and time.monotonic() - t0 < 0.5 and store.stats["builds"] == 1
    assert "PATH" in again.config.env and again.config.workdir is None
    with erofs_tree(again.disk) as (tree, exact):
        assert (tree / "usr/bin/python3").exists() or (tree / "usr/bin/python3").is_symlink()
        assert (tree / "etc/resolv.conf").read_text() == "nameserver 10.0.2.3\n"
        for name in REQUIRED_DIRS:
            assert stat.S_ISDIR(os.lstat(tree / name).st_mode), name
        if exact:
            assert os.stat(tree / "usr/bin/passwd").st_mode & stat.S_ISUID
    # A fresh store on the same directory reuses the imported layout and the entry.
    other = ImageStore(store.settings)
    assert (await other.resolve(None)).digest == img[0].digest and other.stats["builds"] == 0
    # Not pruned: the default image is the offline fallback.
    os.utime(again.disk.parent / "last_used", (1, 1))
    assert await store.prune(budget_bytes=0) == []
