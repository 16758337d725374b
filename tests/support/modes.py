"""What another user could reach in a directory tree: the data directory's tests walk with it."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def loose_entries(root: Path) -> list[str]:
    """Everything under root (symlinks not followed) a group or other could read, write or enter,
    and files with an executable bit, as `"<octal mode> <relative path>"`."""
    found = [f"{oct(stat.S_IMODE(os.lstat(root).st_mode))} ."] if os.lstat(root).st_mode & 0o077 else []
    for current, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(current, name)
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                continue
            if mode & 0o077 or (stat.S_ISREG(st.st_mode) and mode & 0o111):
                found.append(f"{oct(mode)} {os.path.relpath(path, root)}")
    return found
