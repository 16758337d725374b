"""Guest kernel + the few modules the initramfs needs, from Debian's cloud kernel.

The package is only downloaded and unpacked (`dpkg -x`), never installed on the host.
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from chaser.guest import cache
from chaser.guest.util import GuestBuildFailed, input_hash, run

METAPACKAGE = "linux-image-cloud-amd64"

# What init needs: virtio transport, disks, network, entropy, the OS/image
# file system and the sandbox overlay. Dependencies are added automatically.
# qemu_fw_cfg: the agent reads its boot token from fw_cfg (chaser/agent/protocol.py).
WANTED_MODULES = ("virtio_mmio", "virtio_blk", "virtio_net", "virtio_rng", "erofs", "overlay", "qemu_fw_cfg")


@dataclass(frozen=True)
class KernelPackage:
    name: str
    version: str


@dataclass(frozen=True)
class Kernel:
    dir: Path
    vmlinuz: Path
    modules_dir: Path  # *.ko plus `order` (file names, dependencies first)
    version: str  # uname -r


def modname(path_or_name: str) -> str:
    """Kernel module name as the kernel sees it: basename, no .ko*, '-' == '_'."""
    base = path_or_name.rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base)
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """modules.dep → {modname: (relative path, [dependency paths])}."""
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, _, rest = line.partition(":")
        deps[modname(path.strip())] = (path.strip(), rest.split())
    return deps


def parse_builtin(text: str) -> set[str]:
    return {modname(line.strip()) for line in text.splitlines() if line.strip()}


def resolve_load_order(wanted: list[str] | tuple[str, ...], dep_text: str, builtin_text: str = "") -> list[str]:
    """Relative module paths for the closure of `wanted`, dependencies first.

    Built-in modules are skipped. The order is a depth-first topological sort
    over each module's own modules.dep line (which lists its transitive
    dependencies), so e.g. virtio_ring comes before virtio because virtio's
    line names virtio_ring."""
    deps = parse_modules_dep(dep_text)
    builtin = parse_builtin(builtin_text)
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in builtin or state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise GuestBuildFailed(f"module dependency cycle: {' -> '.join((*chain, name))}")
        if name not in deps:
            raise GuestBuildFailed(f"kernel module {name!r} is neither a module nor built in")
        state[name] = "visiting"
        path, dep_paths = deps[name]
        # modprobe loads a line's dependencies from the last to the first.
        for dep in reversed(dep_paths):
            visit(modname(dep), (*chain, name))
        state[name] = "done"
        order.append(path)

    for w in wanted:
        visit(modname(w), ())
    return order


def resolve_package() -> KernelPackage:
    """The concrete linux-image-* package behind the metapackage, and its version."""
    out = run(["apt-cache", "depends", METAPACKAGE], what="apt-cache depends").stdout
    names = re.findall(r"Depends:\s*(linux-image-\S+)", out)
    if not names:
        raise GuestBuildFailed(f"cannot resolve {METAPACKAGE} (is it in the apt sources? run apt-get update)")
    name = names[0]
    pol = run(["apt-cache", "policy", name], what="apt-cache policy").stdout
    m = re.search(r"Candidate:\s*(\S+)", pol)
    if not m or m.group(1) == "(none)":
        raise GuestBuildFailed(f"no installable candidate for {name}")
    return KernelPackage(name, m.group(1))


def _decompressed(src: Path, dest: Path) -> None:
    if src.name.endswith(".ko.xz"):
        dest.write_bytes(lzma.decompress(src.read_bytes()))
    elif src.name.endswith(".ko.zst"):
        run(["zstd", "-q", "-d", "-f", "-o", str(dest), str(src)], what="zstd")
    elif src.name.endswith(".ko.gz"):
        dest.write_bytes(gzip.decompress(src.read_bytes()))
    else:
        shutil.copyfile(src, dest)


def _build(pkg: KernelPackage, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="chaser-kernel-") as work:
        w = Path(work)
        # apt-get download writes to the cwd; _apt cannot read a 0700 root temp dir,
        # which only causes a warning (it downloads unsandboxed).
        run(["apt-get", "download", f"{pkg.name}={pkg.version}"], what="apt-get download", cwd=w)
        debs = list(w.glob("*.deb"))
        if len(debs) != 1:
            raise GuestBuildFailed(f"apt-get download produced {debs}")
        x = w / "x"
        run(["dpkg", "-x", str(debs[0]), str(x)], what="dpkg -x")
        versions = [p.name for p in (x / "lib/modules").iterdir()]
        if len(versions) != 1:
            raise GuestBuildFailed(f"unexpected lib/modules content: {versions}")
        kver = versions[0]
        mroot = x / "lib/modules" / kver
        # The package ships no modules.dep (it is made at install time); make it here.
        if not (mroot / "modules.dep").exists():
            run(["depmod", "-b", str(x), kver], what="depmod")
        builtin = (mroot / "modules.builtin").read_text() if (mroot / "modules.builtin").exists() else ""
        order = resolve_load_order(WANTED_MODULES, (mroot / "modules.dep").read_text(), builtin)

        shutil.copyfile(x / "boot" / f"vmlinuz-{kver}", out / "vmlinuz")
        if (x / "boot" / f"config-{kver}").exists():
            shutil.copyfile(x / "boot" / f"config-{kver}", out / "config")  # for reference
        mods = out / "modules"
        mods.mkdir()
        names = []
        for rel in order:
            name = Path(re.sub(r"\.(xz|zst|gz)$", "", rel)).name  # stored decompressed
            _decompressed(mroot / rel, mods / name)
            names.append(name)
        (mods / "order").write_text("".join(n + "\n" for n in names))
        (out / "version").write_text(kver + "\n")
        (out / "package").write_text(f"{pkg.name} {pkg.version}\n")


def _apt_state() -> str:
    """Cheap signature of the apt metadata that decides the candidate version."""
    items = []
    for pattern in ("/var/lib/apt/lists/*", "/etc/apt/sources.list", "/etc/apt/sources.list.d/*",
                    "/etc/apt/preferences", "/etc/apt/preferences.d/*"):
        for p in sorted(Path("/").glob(pattern.lstrip("/"))):
            try:
                st = p.stat()
            except OSError:
                continue
            items.append((str(p), st.st_size, st.st_mtime_ns))
    return input_hash(items)


def resolve_package_cached(guest_dir: Path) -> KernelPackage:
    """resolve_package(), remembered until the apt lists change: the two apt-cache
    calls take ~1 s, which would dominate an otherwise no-op build."""
    memo = guest_dir / ".kernel-package.json"
    state = _apt_state()
    try:
        data = json.loads(memo.read_text())
        if data["apt_state"] == state:
            return KernelPackage(data["name"], data["version"])
    except (OSError, ValueError, KeyError):
        pass
    pkg = resolve_package()
    guest_dir.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_suffix(".tmp")
    tmp.write_text(json.dumps({"apt_state": state, "name": pkg.name, "version": pkg.version}))
    os.replace(tmp, memo)
    return pkg


def ensure_kernel(guest_dir: Path, progress=print) -> Kernel:
    pkg = resolve_package_cached(guest_dir)
    key = input_hash({"package": pkg.name, "version": pkg.version, "modules": list(WANTED_MODULES)})

    def build(tmp: Path) -> None:
        progress(f"kernel: fetching {pkg.name} {pkg.version}")
        _build(pkg, tmp)

    d, _ = cache.ensure_entry(guest_dir, "kernel", key, build)
    return Kernel(d, d / "vmlinuz", d / "modules", (d / "version").read_text().strip())
