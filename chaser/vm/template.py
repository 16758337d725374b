"""The template snapshot: one guest booted once per (guest assets, memory,
vCPUs, accel), its RAM kept in a file and its device state in another. Clones
map the RAM file privately (copy-on-write) and load only the device state.

What still needs a template holds it: a symlink in its `holds/` to the holder, a
running VM's directory or a saved state's (chaser/vm/suspend.py). Building the
template of another key retires the old ones, except those whose holders exist."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from chaser.agent.protocol import AGENT_PROTOCOL_VERSION
from chaser.vm.qemu import MACHINE

TEMPLATE_FORMAT = 5  # bump when the way templates are made changes


@dataclass(frozen=True)
class Template:
    dir: Path
    created_at: float  # tells a rebuilt template from the one a failed restore used

    @property
    def memory_file(self) -> Path:
        return self.dir / "memory.ram"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.bin"

    @property
    def image_placeholder(self) -> Path:
        return self.dir / "image.placeholder"

    @property
    def writable_placeholder(self) -> Path:
        return self.dir / "writable.placeholder"

    @property
    def meta_file(self) -> Path:
        return self.dir / "meta.json"

    @property
    def holds_dir(self) -> Path:
        return self.dir / "holds"

    @property
    def key(self) -> str:
        return self.dir.name


@lru_cache
def qemu_version() -> str:
    try:
        return subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    except OSError:
        return "unknown"


def template_key(
    *, fingerprint: str, memory_mib: int, vcpus: int, accel: str, image_slot: int, writable_slot: int,
    network: str = "user",
) -> str:
    """`network` is the netdev backend: a slirp snapshot has slirp state in its
    migration stream and does not restore with a tap, nor the reverse."""
    parts = [
        fingerprint, str(memory_mib), str(vcpus), accel, str(image_slot), str(writable_slot), network,
        qemu_version(), str(TEMPLATE_FORMAT), str(AGENT_PROTOCOL_VERSION), MACHINE,
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def load_template(directory: Path) -> Template | None:
    """A template counts only once its meta file exists (written last)."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    created_at = meta.get("created_at") if isinstance(meta, dict) else None
    if not isinstance(created_at, (int, float)):
        return None
    template = Template(dir=directory, created_at=float(created_at))
    for path in (template.memory_file, template.state_file, template.image_placeholder, template.writable_placeholder):
        if not path.exists():
            return None
    return template


def discard_template(directory: Path) -> None:
    """Unlink (never rewrite) the files: running clones keep their mapping of
    the old RAM file's inode."""
    shutil.rmtree(directory, ignore_errors=True)


def discard_failed_template(template: Template) -> bool:
    """Discard `template` after a failed restore, unless it was already
    replaced: several restores can fail on one bad snapshot, and a late one
    must not delete the rebuilt template. True when it was discarded."""
    current = load_template(template.dir)
    if current is not None and current.created_at == template.created_at:
        discard_template(template.dir)
        return True
    return False


def hold(template: Template, holder: Path) -> None:
    """`template` stays while `holder` (a directory) exists: retiring it would strand a VM
    whose RAM maps it, or a saved state filtered against it."""
    try:
        template.holds_dir.mkdir(exist_ok=True)
    except FileNotFoundError:  # discarded meanwhile: nothing left to keep
        return
    link = template.holds_dir / hashlib.sha256(str(holder).encode()).hexdigest()[:20]
    try:
        os.symlink(holder, link)
    except FileExistsError:
        pass


def held(directory: Path) -> bool:
    """Some holder of the template in `directory` still exists (stale links are removed)."""
    try:
        links = list((directory / "holds").iterdir())
    except OSError:
        return False
    holding = False
    for link in links:
        if link.exists():  # follows the link: the holder is there
            holding = True
        else:
            link.unlink(missing_ok=True)
    return holding


def retire_other_templates(templates_dir: Path, keep: Path) -> None:
    """Every template but `keep` goes, unless something still holds it (`hold`)."""
    if not templates_dir.is_dir():
        return
    for entry in templates_dir.iterdir():
        if entry != keep and entry.is_dir() and not entry.name.startswith(".") and not held(entry):
            discard_template(entry)
