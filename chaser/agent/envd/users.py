"""E2B's default user: `user`, home `/home/user`, added to the sandbox when its image lacks it."""

import os
import posixpath

from ..safepath import Root, read_text

FIRST_UID = 1000


def _ids(text: str, column: int) -> set:
    ids = set()
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) > column and parts[column].isdigit():
            ids.add(int(parts[column]))
    return ids


def _append(root: Root, path: str, line: str) -> None:
    fd = root.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def add_user(root_dir: str, name: str) -> None:
    """Add `name` (a free uid/gid from 1000, home /home/<name>, bash if the image has it)
    unless the sandbox has it; make its home either way."""
    passwd = read_text(root_dir, "/etc/passwd") or ""
    groups = read_text(root_dir, "/etc/group") or ""
    home = f"/home/{name}"
    with Root(root_dir) as root:
        entry = next((line.split(":") for line in passwd.splitlines() if line.split(":")[0] == name), None)
        if entry is None:
            taken = _ids(passwd, 2) | _ids(groups, 2)
            uid = next(i for i in range(FIRST_UID, 60000) if i not in taken)
            try:
                os.close(root.open("/bin/bash", os.O_PATH))
                shell = "/bin/bash"
            except OSError:
                shell = "/bin/sh"
            sep = "" if not passwd or passwd.endswith("\n") else "\n"
            _append(root, "/etc/passwd", f"{sep}{name}:x:{uid}:{uid}::{home}:{shell}\n")
            sep = "" if not groups or groups.endswith("\n") else "\n"
            _append(root, "/etc/group", f"{sep}{name}:x:{uid}:\n")
            gid = uid
        else:
            uid, gid, home = int(entry[2]), int(entry[3]), entry[5] or home
        root.makedirs(posixpath.dirname(home) or "/")
        root.makedirs(home, uid, gid, mode=0o755)
