"""Layer scanning, tree preparation and store bookkeeping, without external tools."""

import io
import json
import os
import stat
import tarfile
import time

import pytest

from chaser import errors
from chaser.config import Settings
from chaser.images import ImageStore
from chaser.images.unpack import REQUIRED_DIRS, ensure_dirs, scan_layer


def _tar(path, entries, mode="w"):
    with tarfile.open(path, mode) as tf:
        for name, kind, extra in entries:
            ti = tarfile.TarInfo(name)
            data = b""
            if kind == "file":
                data = extra if extra is not None else b"x"
                ti.size = len(data)
            elif kind == "dir":
                ti.type = tarfile.DIRTYPE
            elif kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, extra
            elif kind == "hard":
                ti.type, ti.linkname = tarfile.LNKTYPE, extra
            tf.addfile(ti, io.BytesIO(data) if kind == "file" else None)
    return path


@pytest.mark.parametrize("entries,match", [
    ([("../evil", "file", None)], "'../evil'"),
    ([("a/../../evil", "file", None)], "outside"),
    ([("/abs", "file", None)], "'/abs'"),
    ([("ok", "file", None), ("hl", "hard", "../../x")], "hard link 'hl'"),
    ([("hl", "hard", "/etc/passwd")], "hard link"),
    ([("..", "dir", None)], "outside"),
])
def test_scan_rejects_escapes(tmp_path, entries, match):
    for mode in ("w", "w:gz"):
        path = _tar(tmp_path / f"l.tar{mode[2:]}", entries, mode)
        with pytest.raises(errors.InvalidImage, match=match) as ei:
            scan_layer(path, 1)
        assert "layer 2" in ei.value.message and ei.value.status == 400


def test_scan_accepts_normal_layers(tmp_path):
    path = _tar(tmp_path / "ok.tar.gz", [
        ("./", "dir", None), ("./etc", "dir", None), ("./etc/x", "file", b"hello"),
        ("abs-link", "sym", "/etc/passwd"), ("up-link", "sym", "../../../outside"),
        ("hl", "hard", "./etc/x"), ("a/../b", "file", b"ok"), (".wh.gone", "file", b""),
        ("dir/.wh..wh..opq", "file", b""),
    ], "w:gz")
    assert scan_layer(path, 0) == len("hello") + 2


def test_scan_size_limit_and_garbage(tmp_path):
    path = _tar(tmp_path / "big.tar", [("a", "file", b"x" * 100), ("b", "file", b"y" * 100)])
    assert scan_layer(path, 0, max_unpacked=200) == 200
    with pytest.raises(errors.PayloadTooLarge):
        scan_layer(path, 0, max_unpacked=150)
    with pytest.raises(errors.PayloadTooLarge):
        scan_layer(path, 0, max_unpacked=300, already=150)
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x1f\x8b" + os.urandom(2000))
    with pytest.raises(errors.InvalidImage, match="not a valid tar"):
        scan_layer(junk, 0)


def test_ensure_dirs_replaces_symlinks_and_files(tmp_path):
    root = tmp_path / "rootfs"
    root.mkdir(mode=0o700)
    (root / "tmp").symlink_to("/var/tmp")
    (root / "run").write_text("not a dir")
    (root / "proc").mkdir()
    (root / "proc" / "keep").write_text("kept")
    ensure_dirs(root)
    for name, _mode in REQUIRED_DIRS.items():
        st = os.lstat(root / name)
        assert stat.S_ISDIR(st.st_mode), name
    assert stat.S_IMODE(os.lstat(root / "tmp").st_mode) == 0o1777
    assert (root / "proc" / "keep").read_text() == "kept"  # existing dirs untouched
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o755


# --------------------------------------------------------------------------- bookkeeping


def _fake_entry(store: ImageStore, n: int, size: int, last_used: float) -> str:
    digest = "sha256:" + f"{n:064x}"
    entry = store.entry_dir(digest)
    entry.mkdir(parents=True)
    (entry / "rootfs.erofs").write_bytes(b"\0" * size)
    (entry / "config.json").write_text(json.dumps({"config": {"Env": [f"N={n}"]}}))
    (entry / "meta.json").write_text(json.dumps({"digest": digest, "size_bytes": size, "created": last_used}))
    (entry / "last_used").touch()
    os.utime(entry / "last_used", (last_used, last_used))
    return digest


@pytest.fixture
def store(tmp_path):
    return ImageStore(Settings(home=tmp_path))


async def test_list_remove_and_refs(store):
    old = time.time() - 3600
    a = _fake_entry(store, 1, 100, old)
    b = _fake_entry(store, 2, 200, old + 10)
    store.refs.update(set_refs={"docker.io/library/a:1": a, "docker.io/library/a:latest": a})
    rows = await store.list()
    assert [(r["ref"], r["digest"], r["size"]) for r in rows] == [
        ("docker.io/library/a:1", a, 100), ("docker.io/library/a:latest", a, 100), (None, b, 200)]
    assert rows[0]["last_used"].startswith(time.strftime("%Y", time.gmtime(old)))

    assert await store.remove("a:1") == []  # another tag still points at it
    with pytest.raises(errors.Conflict):
        await store.remove("a", in_use={a})
    assert await store.remove("a") == [a]
    assert not store.entry_dir(a).exists()
    with pytest.raises(errors.ImageNotFound):
        await store.remove("a")
    with pytest.raises(errors.ImageNotFound):
        await store.remove("sha256:" + "f" * 64)
    assert await store.remove(b) == [b]
    assert await store.list() == []
    assert not [p for p in store.root.iterdir() if p.name.startswith(".tmp-")]


async def test_prune_lru_within_budget(store):
    now = time.time()
    a = _fake_entry(store, 1, 100, now - 3000)
    b = _fake_entry(store, 2, 100, now - 2000)
    c = _fake_entry(store, 3, 100, now - 1000)
    recent = _fake_entry(store, 4, 100, now)
    base = _fake_entry(store, 5, 100, now - 9000)
    store.refs.update(set_refs={"chaser/base": base})
    assert await store.prune(budget_bytes=1000) == []
    # Oldest first; `b` in use; the recent one and the default image are spared.
    assert await store.prune(budget_bytes=250, in_use=lambda: {b}) == [a, c]
    assert await store.prune(budget_bytes=0) == [b]
    assert {r["digest"] for r in await store.list()} == {recent, base}


async def test_prune_uses_settings_budget_and_cleans_tmp(tmp_path):
    store = ImageStore(Settings(home=tmp_path, image_cache_budget_bytes=150))
    _fake_entry(store, 1, 100, time.time() - 3000)
    newer = _fake_entry(store, 2, 100, time.time() - 2000)
    stale = store.root / ".tmp-deadbeef-abc"
    stale.mkdir()
    (stale / "junk").write_text("x")
    assert len(await store.prune()) == 1
    assert not stale.exists()
    assert [r["digest"] for r in await store.list()] == [newer]


async def test_resolve_by_cached_digest_needs_no_tools(store):
    digest = _fake_entry(store, 7, 50, time.time())
    img = await store.resolve(f"example.com/x@{digest}")
    assert img.digest == digest and img.reference == f"example.com/x@{digest}"
    assert img.config.env == {"N": "7"} and img.size_bytes == 50
    assert store.skopeo.calls == {"inspect": 0, "copy": 0}
    assert [r["ref"] for r in await store.list()] == [f"example.com/x@{digest}"]


async def test_local_sources_off_by_default(store, tmp_path):
    with pytest.raises(errors.InvalidImage, match="not enabled"):
        await store.resolve(f"oci:{tmp_path}:x")
    with pytest.raises(errors.ImageNotFound):
        await store.resolve(f"oci:{tmp_path}/missing:x", allow_local=True)


def test_cli_list_rm_prune(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from chaser.cli.commands import images as cli
    from chaser.config import get_settings

    monkeypatch.setenv("CHASER_HOME", str(tmp_path))
    get_settings.cache_clear()
    try:
        store = ImageStore(Settings(home=tmp_path))
        digest = _fake_entry(store, 9, 1234, time.time() - 3600)
        store.refs.update(set_refs={"docker.io/library/x:1": digest})
        runner = CliRunner()
        res = runner.invoke(cli.app, ["list", "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)[0]["digest"] == digest
        res = runner.invoke(cli.app, ["list"])
        assert "docker.io/library/x:1" in res.stdout and "1.2 KB" in res.stdout
        res = runner.invoke(cli.app, ["rm", "nope"])
        assert res.exit_code == 1
        res = runner.invoke(cli.app, ["prune", "--budget", "0", "--json"])
        assert json.loads(res.stdout) == {"deleted": [digest]}
        res = runner.invoke(cli.app, ["pull", "--json", "BAD REF"])
        assert res.exit_code == 1
    finally:
        get_settings.cache_clear()
