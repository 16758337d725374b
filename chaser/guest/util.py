"""Shared helpers for the guest-asset builder: errors, subprocess, hashing."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from chaser.errors import ChaserError

# Bump when the way any component is built changes, so every cache entry is rebuilt.
BUILDER_VERSION = "1"


class GuestBuildFailed(ChaserError):
    """Building the guest kernel, initramfs or disks failed."""

    code = "guest_build_failed"


def run(cmd: list[str], *, what: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a tool; on failure raise GuestBuildFailed with the tail of its stderr."""
    try:
        return subprocess.run(cmd, check=True, text=True, capture_output=True, **kwargs)
    except FileNotFoundError as exc:
        raise GuestBuildFailed(f"{what}: {cmd[0]} is not installed") from exc
    except subprocess.CalledProcessError as exc:
        tail = "\n".join((exc.stderr or exc.stdout or "").strip().splitlines()[-20:])
        raise GuestBuildFailed(f"{what} failed (exit {exc.returncode}): {' '.join(cmd)}\n{tail}") from exc


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def input_hash(inputs: Any) -> str:
    """Short, stable hash of a JSON-able description of a component's inputs."""
    blob = json.dumps({"builder": BUILDER_VERSION, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]
