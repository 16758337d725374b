"""The data directory (`CHASER_HOME`) is private to the server's user: directories 0700, files 0600.

The server and the admin commands that write the home (`chaser guest build`, `chaser images`)
set the umask `PRIVATE_UMASK` at start, and `make_private` tightens a home an earlier version
(or another tool) left readable: what is inside it includes the database, workspace disks and
serial logs (docs/operations.md, "What is stored")."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600
# What an image's or the guest OS's file tree is built with: the modes inside a sandbox's root
# file system are the image's own, not the data directory's (subprocess `umask=`).
CONTENT_UMASK = 0o022
# Work directories of builds in progress (guest assets, images: mkdtemp, 0700) hold file trees whose
# modes become a root file system's: tightened themselves, never descended into.
WORK_PREFIX = ".tmp-"

log = logging.getLogger("chaser.datadir")


def use_private_umask() -> int:
    """Set the process umask to `PRIVATE_UMASK`; the previous one."""
    return os.umask(PRIVATE_UMASK)


def tighten(root: Path) -> int:
    """Directories to 0700, regular files to 0600 (executable bits off), wherever group or other
    had a bit, or a file had an executable bit; symlinks are neither followed nor changed, work
    directories (`WORK_PREFIX`) not entered. How many entries changed."""
    changed = 0

    def fix(path: str, mode: int, wanted: int) -> None:
        nonlocal changed
        if stat.S_IMODE(mode) != wanted:
            os.chmod(path, wanted)  # lstat said: not a symlink (Linux cannot chmod one anyway)
            changed += 1

    try:
        top = os.lstat(root)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(top.st_mode):
        return 0
    if stat.S_IMODE(top.st_mode) & 0o077:
        fix(str(root), top.st_mode, DIR_MODE)
    for current, dirs, files in os.walk(root, followlinks=False):
        names = dirs + files
        dirs[:] = [name for name in dirs if not name.startswith(WORK_PREFIX)]
        for name in names:
            path = os.path.join(current, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # removed meanwhile
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                if mode & 0o077:
                    fix(path, st.st_mode, DIR_MODE)
            elif stat.S_ISREG(st.st_mode) and mode & 0o177:
                fix(path, st.st_mode, mode & FILE_MODE or FILE_MODE)
    return changed


def make_private(home: Path) -> int:
    """Create `home` 0700 (and its missing parents as mkdir does), or tighten an existing one;
    logs one line when anything changed. How many entries changed."""
    if not home.exists():
        home.mkdir(parents=True, mode=DIR_MODE)
        os.chmod(home, DIR_MODE)  # mkdir's mode is subject to the umask
        return 0
    changed = tighten(home)
    if changed:
        log.warning("data directory %s was readable by other users: made %d directories and files private "
                    "(directories 0700, files 0600)", home, changed)
    return changed
