"""The initramfs: busybox-static, the kernel modules, /init and the agent code."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from chaser.agent import protocol
from chaser.guest import cache, cpio
from chaser.guest.kernel import Kernel
from chaser.guest.util import GuestBuildFailed, input_hash, sha256_file

INIT_SCRIPT = Path(__file__).parent / "files" / "init.sh"
AGENT_SRC = Path(__file__).resolve().parent.parent / "agent"
AGENT_DEST = "agent/chaser_agent"  # → /agent/chaser_agent in the initramfs
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")  # busybox-static installs /bin/busybox

# Applets init.sh calls by name (everything else would need `busybox X`).
APPLETS = (
    "sh", "mount", "umount", "switch_root", "insmod", "ip", "mkdir", "cat", "sleep",
    "reboot", "echo", "cp", "ls", "dmesg", "test", "[",
)

# Constants substituted into init.sh so the script never duplicates the protocol.
PLACEHOLDERS = {
    "@OS_DISK_SERIAL@": protocol.OS_DISK_SERIAL,
    "@PROBE_MARKER@": protocol.PROBE_MARKER,
    "@CMDLINE_PROBE@": protocol.CMDLINE_PROBE,
}


def find_busybox() -> Path:
    for c in BUSYBOX_CANDIDATES:
        p = Path(c)
        if p.is_file():
            return p
    raise GuestBuildFailed("busybox not found: install the busybox-static package")


def render_init(template: str) -> str:
    for k, v in PLACEHOLDERS.items():
        template = template.replace(k, v)
    leftover = re.findall(r"@[A-Z_]+@", template)
    if leftover:
        raise GuestBuildFailed(f"unfilled placeholders in init.sh: {leftover}")
    return template


def agent_files(src: Path = AGENT_SRC) -> list[Path]:
    """The agent's *.py files (relative), without caches, in a stable order."""
    if not src.is_dir():
        return []
    return sorted(p.relative_to(src) for p in src.rglob("*.py") if "__pycache__" not in p.parts)


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def build_entries(busybox: bytes, init: str, modules: list[tuple[str, bytes]],
                  agent: list[tuple[str, bytes]]) -> list[cpio.Entry]:
    entries = [cpio.directory(d) for d in ("bin", "dev", "proc", "sys", "run", "root", "newroot", "modules", "agent")]
    # The kernel opens /dev/console for init before devtmpfs is mounted.
    entries.append(cpio.chardev("dev/console", 5, 1))
    entries.append(cpio.file("bin/busybox", busybox, 0o755))
    entries += [cpio.symlink(f"bin/{a}", "busybox") for a in APPLETS]
    entries.append(cpio.file("init", init.encode(), 0o755))
    for name, data in modules:
        entries.append(cpio.file(f"modules/{name}", data))
    entries.append(cpio.file("modules/order", "".join(n + "\n" for n, _ in modules).encode()))
    seen: set[str] = set()
    for rel, data in agent:
        for d in _parents(f"{AGENT_DEST}/{rel}"):
            if d not in seen and d != "agent":
                seen.add(d)
                entries.append(cpio.directory(d))
        entries.append(cpio.file(f"{AGENT_DEST}/{rel}", data))
    if f"{AGENT_DEST}" not in seen:
        entries.append(cpio.directory(AGENT_DEST))  # init copies it even if empty
    return entries


def ensure_initramfs(guest_dir: Path, kernel: Kernel, progress=print) -> tuple[Path, str]:
    """Returns (initramfs path, cache key)."""
    busybox = find_busybox()
    init = render_init(INIT_SCRIPT.read_text())
    order = (kernel.modules_dir / "order").read_text().split()
    rel_agent = agent_files()
    key = input_hash({
        "busybox": sha256_file(busybox),
        "init": init,
        "applets": list(APPLETS),
        "modules": [(n, sha256_file(kernel.modules_dir / n)) for n in order],
        "agent": [(str(r), sha256_file(AGENT_SRC / r)) for r in rel_agent],
    })

    def build(tmp: Path) -> None:
        progress("initramfs: building")
        entries = build_entries(
            busybox.read_bytes(), init,
            [(n, (kernel.modules_dir / n).read_bytes()) for n in order],
            [(str(r), (AGENT_SRC / r).read_bytes()) for r in rel_agent],
        )
        cpio.write_gzip_newc(tmp / "initramfs.img", entries)
        shutil.copyfile(INIT_SCRIPT, tmp / "init.sh.template")  # for debugging

    d, _ = cache.ensure_entry(guest_dir, "initramfs", key, build)
    return d / "initramfs.img", key
