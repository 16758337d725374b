"""Pure-logic tests of the guest-asset builder (no downloads, no QEMU)."""

from __future__ import annotations

import gzip
import json
import stat
from pathlib import Path

import pytest

from chaser.agent import protocol
from chaser.config import Settings
from chaser.errors import GuestAssetsMissing
from chaser.guest import cache, cpio
from chaser.guest.build import GuestAssets, _write_manifest, fingerprint, load_guest_assets
from chaser.guest.initramfs import INIT_SCRIPT, agent_files, build_entries, render_init
from chaser.guest.kernel import WANTED_MODULES, modname, resolve_load_order
from chaser.guest.util import GuestBuildFailed, input_hash, run

# Trimmed from the real 6.1.0 cloud kernel's modules.dep (made with depmod).
MODULES_DEP = """\
kernel/fs/overlayfs/overlay.ko:
kernel/fs/xfs/xfs.ko: kernel/lib/libcrc32c.ko
kernel/fs/erofs/erofs.ko: kernel/lib/libcrc32c.ko
kernel/lib/libcrc32c.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko \
kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/firmware/qemu_fw_cfg.ko:
"""
BUILTIN = "kernel/fs/ext4/ext4.ko\nkernel/drivers/char/hw_random/rng-core.ko\n"


def names(paths: list[str]) -> list[str]:
    return [modname(p) for p in paths]


def test_modname_normalizes() -> None:
    assert modname("kernel/drivers/char/hw_random/virtio-rng.ko.xz") == "virtio_rng"
    assert modname("virtio_blk.ko.zst") == "virtio_blk"
    assert modname("overlay") == "overlay"


def test_load_order_matches_what_boots() -> None:
    order = names(resolve_load_order(WANTED_MODULES, MODULES_DEP, BUILTIN))
    assert order == [
        "virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "failover", "net_failover",
        "virtio_net", "virtio_rng", "libcrc32c", "erofs", "overlay", "qemu_fw_cfg",
    ]


def test_load_order_dependencies_first_and_unique() -> None:
    order = names(resolve_load_order(["virtio_net", "virtio_blk", "virtio_net"], MODULES_DEP))
    assert len(order) == len(set(order))
    for mod, deps in {"virtio_net": ["failover", "net_failover", "virtio", "virtio_ring"],
                      "virtio": ["virtio_ring"], "net_failover": ["failover"]}.items():
        for d in deps:
            assert order.index(d) < order.index(mod)


def test_builtin_modules_are_skipped() -> None:
    dep = MODULES_DEP + "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko\n"
    assert resolve_load_order(["ext4", "overlay"], dep, BUILTIN) == ["kernel/fs/overlayfs/overlay.ko"]
    assert resolve_load_order(["rng_core"], "", BUILTIN) == []


def test_unknown_module_and_cycle_fail() -> None:
    with pytest.raises(GuestBuildFailed, match="nope"):
        resolve_load_order(["nope"], MODULES_DEP)
    with pytest.raises(GuestBuildFailed, match="cycle"):
        resolve_load_order(["a"], "a.ko: b.ko\nb.ko: a.ko\n")


def test_input_hash_stable_and_sensitive() -> None:
    a = input_hash({"x": [1, 2], "y": "z"})
    assert a == input_hash({"y": "z", "x": [1, 2]})  # key order does not matter
    assert a != input_hash({"x": [2, 1], "y": "z"})
    assert len(a) == 20 and int(a, 16) >= 0


def test_fingerprint_changes_with_any_component() -> None:
    base = fingerprint("kernel-a", "initramfs-b", "os-c")
    assert base == fingerprint("kernel-a", "initramfs-b", "os-c")
    assert len({base, fingerprint("kernel-x", "initramfs-b", "os-c"),
                fingerprint("kernel-a", "initramfs-x", "os-c"),
                fingerprint("kernel-a", "initramfs-b", "os-x")}) == 4


def parse_newc(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """A reader independent of the writer, following the kernel's format spec."""
    out, off = {}, 0
    while True:
        assert data[off:off + 6] == b"070701"
        f = [int(data[off + 6 + 8 * i: off + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, rmaj, rmin, namesize = f[1], f[6], f[9], f[10], f[11]
        off += 110
        name = data[off:off + namesize - 1].decode()
        off += namesize + (-(110 + namesize) % 4)
        body = data[off:off + filesize]
        off += filesize + (-filesize % 4)
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body, (rmaj, rmin))


def test_newc_roundtrip(tmp_path: Path) -> None:
    entries = [cpio.directory("bin"), cpio.file("bin/busybox", b"\x7fELF" * 3, 0o755),
               cpio.symlink("bin/sh", "busybox"), cpio.chardev("dev/console", 5, 1),
               cpio.file("init", b"#!/bin/sh\n", 0o755), cpio.file("empty", b"")]
    path = tmp_path / "i.img"
    cpio.write_gzip_newc(path, entries)
    parsed = parse_newc(gzip.decompress(path.read_bytes()))
    assert list(parsed) == ["bin", "bin/busybox", "bin/sh", "dev/console", "init", "empty"]
    assert stat.S_ISDIR(parsed["bin"][0])
    assert parsed["bin/busybox"][1] == b"\x7fELF" * 3 and parsed["bin/busybox"][0] & 0o777 == 0o755
    assert stat.S_ISLNK(parsed["bin/sh"][0]) and parsed["bin/sh"][1] == b"busybox"
    assert stat.S_ISCHR(parsed["dev/console"][0]) and parsed["dev/console"][2] == (5, 1)
    # Reproducible: same entries, same bytes (gzip mtime fixed).
    cpio.write_gzip_newc(tmp_path / "j.img", entries)
    assert (tmp_path / "j.img").read_bytes() == path.read_bytes()


def test_initramfs_layout() -> None:
    entries = build_entries(b"BB", "#!/bin/busybox sh\n", [("virtio_ring.ko", b"a"), ("virtio.ko", b"b")],
                            [("__init__.py", b""), ("sub/x.py", b"y")])
    parsed = parse_newc(cpio.newc_bytes(entries))
    assert parsed["modules/order"][1] == b"virtio_ring.ko\nvirtio.ko\n"
    assert parsed["init"][1].startswith(b"#!") and parsed["init"][0] & 0o111
    assert parsed["bin/switch_root"][1] == b"busybox"
    assert "agent/chaser_agent/sub" in parsed and parsed["agent/chaser_agent/sub/x.py"][1] == b"y"
    names_ = [e.name for e in entries]
    assert len(names_) == len(set(names_))
    for n in names_:  # parents precede children
        parent = n.rsplit("/", 1)[0]
        if "/" in n:
            assert names_.index(parent) < names_.index(n)


def test_init_script_gets_protocol_constants() -> None:
    script = render_init(INIT_SCRIPT.read_text())
    assert protocol.PROBE_MARKER in script and protocol.OS_DISK_SERIAL in script
    assert f"{protocol.CMDLINE_PROBE}=1" in script
    assert "switch_root" in script and "/usr/bin/tini" in script
    with pytest.raises(GuestBuildFailed):
        render_init("echo @UNKNOWN_THING@")


def test_agent_files_skip_caches(tmp_path: Path) -> None:
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"")
    (tmp_path / "__pycache__" / "junk.py").write_text("")
    (tmp_path / "a.py").write_text("")
    (tmp_path / "notes.txt").write_text("")
    assert [str(p) for p in agent_files(tmp_path)] == ["a.py"]
    assert agent_files(tmp_path / "missing") == []


def test_cache_entry_is_atomic(tmp_path: Path) -> None:
    def boom(d: Path) -> None:
        (d / "half").write_text("x")
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        cache.ensure_entry(tmp_path, "kernel", "0" * 20, boom)
    assert list(tmp_path.iterdir()) == []  # nothing half-built left

    calls = []

    def ok(d: Path) -> None:
        calls.append(1)
        (d / "vmlinuz").write_text("k")

    d1, built1 = cache.ensure_entry(tmp_path, "kernel", "0" * 20, ok)
    d2, built2 = cache.ensure_entry(tmp_path, "kernel", "0" * 20, ok)
    assert d1 == d2 and (built1, built2) == (True, False) and calls == [1]
    assert (d1 / "vmlinuz").read_text() == "k"


def test_prune_only_touches_builder_entries(tmp_path: Path) -> None:
    for n in ("kernel-" + "a" * 20, "kernel-" + "b" * 20, "os-tar-" + "c" * 20, ".tmp-os-xyz", "templates"):
        (tmp_path / n).mkdir()
    (tmp_path / "current.json").write_text("{}")
    removed = cache.prune(tmp_path, keep={"kernel-" + "a" * 20})
    assert sorted(removed) == sorted([".tmp-os-xyz", "kernel-" + "b" * 20, "os-tar-" + "c" * 20])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current.json", "kernel-" + "a" * 20, "templates"]


def test_load_guest_assets(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    with pytest.raises(GuestAssetsMissing):
        load_guest_assets(settings)
    g = settings.guest_dir
    g.mkdir(parents=True)
    files = {}
    for name in ("vmlinuz", "initramfs.img", "os.erofs", "base.erofs"):
        files[name] = g / name
        files[name].write_bytes(b"x")
    assets = GuestAssets(files["vmlinuz"], files["initramfs.img"], files["os.erofs"], files["base.erofs"],
                         "6.1.0-1-cloud-amd64", "f" * 64)
    _write_manifest(g, assets)
    assert json.loads((g / "current.json").read_text())["kernel_version"] == "6.1.0-1-cloud-amd64"
    assert load_guest_assets(settings) == assets
    files["os.erofs"].unlink()
    with pytest.raises(GuestAssetsMissing):
        load_guest_assets(settings)
    (g / "current.json").write_text("not json")
    with pytest.raises(GuestAssetsMissing):
        load_guest_assets(settings)


def test_run_reports_stderr_tail() -> None:
    with pytest.raises(GuestBuildFailed, match="boom-message"):
        run(["sh", "-c", "echo boom-message >&2; exit 3"], what="test tool")
    with pytest.raises(GuestBuildFailed, match="not installed"):
        run(["/nonexistent/tool"], what="test tool")
