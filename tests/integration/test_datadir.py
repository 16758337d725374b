"""The data directory of a real server with a real, jailed VM running: nothing in it is readable
by another user, the jailed QEMU (another uid) still runs from it, and the session's env reaches
the sandbox without being written to any file of the home."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from chaser.config import Settings
from tests.integration.conftest import ServerProcess, qemu_pids_under
from tests.support.modes import loose_entries

pytestmark = pytest.mark.vm

SECRET = "s3cr3t-7c2e9a41"


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid in /proc/{pid}/status")


def private_guest_dir(home: Path) -> Path:
    """home/guest as a real directory: the default home's kernel and initramfs copied in with mode
    0600 (what the jailed QEMU cannot open by path), the rest symlinked (the template included)."""
    default = Settings(home=Settings().home).guest_dir
    guest = home / "guest"
    guest.mkdir()
    manifest = json.loads((default / "current.json").read_text())
    for key in ("kernel", "initramfs"):
        source = Path(manifest[key])
        entry = guest / source.parent.name
        entry.mkdir(exist_ok=True)
        shutil.copyfile(source, entry / source.name)
        os.chmod(entry / source.name, 0o600)
        manifest[key] = str(entry / source.name)
    for name in ("templates", "accel.json"):
        (guest / name).symlink_to(default / name)
    (guest / "current.json").write_text(json.dumps(manifest))
    return guest


def memfds_of(pid: int) -> list[str]:
    return [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir() if os.readlink(fd).startswith("/memfd:")]


def test_the_home_of_a_running_server_is_private(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)  # as an earlier version left it
    private_guest_dir(home)
    server = ServerProcess(home=home, config_file=tmp_path / "config.json").start()
    try:
        assert "was readable by other users: made" in server.log()  # the one line at start
        with server.client() as http:
            assert http.post("/v1/workspaces", json={"name": "dev"}).status_code == 200
            created = http.post("/v1/sessions", json={"workspace": "dev", "env": {"TOKEN": SECRET}})
            assert created.status_code == 201, created.text
            session_id = created.json()["id"]
            ran = http.post("/v1/exec", json={"workspace": "dev", "command": "printenv TOKEN; echo x > /workspace/f"})
            assert ran.status_code == 200 and ran.json()["output"] == f"{SECRET}\n", ran.text

            pids = qemu_pids_under(home)
            assert pids, "no QEMU holds files of the home"
            assert all(uid_of(pid) != 0 for pid in pids)  # jailed: another uid, the home is root's 0700
            # It booted a 0600 kernel and initramfs: from sealed memfds, not by path.
            assert all({"/memfd:vmlinuz", "/memfd:initramfs.img"} <= {m.removesuffix(" (deleted)")
                                                                     for m in memfds_of(pid)} for pid in pids)
            assert list((home / "vms").iterdir()) and list((home / "workspaces").iterdir())
            assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
            assert loose_entries(home) == []
            db_files = [p for p in home.iterdir() if p.name.startswith("chaser.db")]
            assert db_files and not [p for p in db_files if SECRET.encode() in p.read_bytes()]

            assert http.delete(f"/v1/sessions/{session_id}").json()["status"] == "terminated"
        with sqlite3.connect(home / "chaser.db") as db:
            assert db.execute("SELECT env FROM sessions WHERE id = ?", (session_id,)).fetchone() == ("{}",)
        assert loose_entries(home) == []
    finally:
        server.stop()
