"""Content-addressed cache entries under guest_dir: `<kind>-<hash>/`.

An entry is built in a sibling temp dir and renamed into place, so a crash
never leaves a half-built entry that a later run would trust.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

KINDS = ("kernel", "initramfs", "os-tar", "os", "base-tar", "base")
_KIND_RE = "|".join(re.escape(k) for k in KINDS)
_ENTRY_RE = re.compile(rf"^({_KIND_RE})-[0-9a-f]{{20}}$")
TMP_PREFIX = ".tmp-"


def entry_name(kind: str, key: str) -> str:
    assert kind in KINDS, kind
    return f"{kind}-{key}"


def ensure_entry(root: Path, kind: str, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """Return (entry dir, built?) — calling `build(tmpdir)` only if it is missing."""
    final = root / entry_name(kind, key)
    if final.is_dir():
        return final, False
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{kind}-", dir=root))
    try:
        build(tmp)
        os.chmod(tmp, 0o700)  # the data directory is private (chaser/datadir.py)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, True


def prune(root: Path, keep: set[str]) -> list[str]:
    """Remove builder entries (and leftover temp dirs) not named in `keep`.

    Only names this module creates are touched: guest_dir also holds other
    things (e.g. template snapshots)."""
    removed: list[str] = []
    if not root.is_dir():
        return removed
    for p in root.iterdir():
        if p.name in keep or not p.is_dir():
            continue
        if _ENTRY_RE.match(p.name) or p.name.startswith(TMP_PREFIX):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed
