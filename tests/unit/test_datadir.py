"""The data directory is private to the server's user (0700 / 0600), and a session's env is never
stored: a fresh home after a session's whole life, a loose home tightened at start, the database
read directly, the migration that blanks what earlier versions stored."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from pathlib import Path

import pytest
from alembic import command

from chaser.datadir import make_private, tighten, use_private_umask
from chaser.store import Database
from chaser.store.db import alembic_config
from tests.support.modes import loose_entries

SECRET = "s3cr3t-value-7f1d"


@pytest.fixture
def server_umask():
    """The umask `chaser server` sets at start (restored after the test)."""
    previous = use_private_umask()
    yield
    os.umask(previous)


def files_under(root: Path) -> list[Path]:
    return [Path(current) / name for current, _dirs, files in os.walk(root) for name in files]


def test_a_fresh_home_is_private_after_a_sessions_whole_life(make_harness, tmp_path, server_umask):
    h = make_harness(tmp_path / "server")
    home = h.settings.home
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    assert h.client.post("/v1/workspaces", json={"name": "dev"}).status_code == 200
    session = h.client.post("/v1/sessions", json={"workspace": "dev", "env": {"TOKEN": SECRET}}).json()
    # The running session has its env: the VM got it, a reuse compares it.
    assert h.runtime.started[-1].spec.env["TOKEN"] == SECRET
    assert h.client.post("/v1/exec", json={"workspace": "dev", "command": "echo hi"}).status_code == 200
    again = h.client.post("/v1/sessions", json={"workspace": "dev", "env": {"TOKEN": SECRET}})
    assert again.status_code == 200 and again.json()["id"] == session["id"]
    assert h.client.post("/v1/sessions", json={"workspace": "dev", "env": {"TOKEN": "other"}}).status_code == 409
    with sqlite3.connect(home / "chaser.db") as db:  # while it runs: not in the database either
        assert db.execute("SELECT env FROM sessions WHERE id = ?", (session["id"],)).fetchone() == ("{}",)
    assert h.client.delete(f"/v1/sessions/{session['id']}").json()["status"] == "terminated"
    h.close()
    assert (home / "chaser.db").is_file() and list((home / "workspaces").iterdir())  # the walk saw real files
    assert loose_entries(home) == []
    with sqlite3.connect(home / "chaser.db") as db:
        assert db.execute("SELECT env FROM sessions").fetchall() == [("{}",)]
    # Not in any file of the home: the database, its WAL, free pages, the workspace disk.
    assert [str(p) for p in files_under(home) if SECRET.encode() in p.read_bytes()] == []


def test_a_loose_home_is_tightened_at_start_with_one_log_line(make_harness, tmp_path, caplog, server_umask):
    base = tmp_path / "server"
    home = base / "home"
    (home / "workspaces" / "ws_1").mkdir(parents=True)
    (home / "vms").mkdir()
    for path in (home, home / "workspaces", home / "workspaces" / "ws_1", home / "vms"):
        os.chmod(path, 0o755)
    disk = home / "workspaces" / "ws_1" / "disk.img"
    disk.write_bytes(b"x")
    os.chmod(disk, 0o644)
    script = home / "vms" / "run.sh"
    script.write_text("#!/bin/sh\n")
    os.chmod(script, 0o755)
    private = home / "vms" / "already.key"
    private.write_text("k")
    os.chmod(private, 0o600)
    outside = tmp_path / "shared-guest"  # e.g. a guest/ symlinked to another home's: not followed
    outside.mkdir()
    (outside / "vmlinuz").write_bytes(b"k")
    os.chmod(outside, 0o755)
    os.chmod(outside / "vmlinuz", 0o644)
    (home / "guest").symlink_to(outside)
    work = home / "images" / ".tmp-build-1"  # a build in progress: its tree keeps the image's modes
    (work / "rootfs" / "bin").mkdir(parents=True)
    (work / "rootfs" / "bin" / "sh").write_bytes(b"elf")
    os.chmod(work / "rootfs" / "bin" / "sh", 0o755)
    os.chmod(work, 0o755)
    os.chmod(home / "images", 0o755)

    caplog.set_level(logging.INFO, logger="chaser.datadir")
    h = make_harness(base)
    lines = [r.getMessage() for r in caplog.records if r.name == "chaser.datadir"]
    # home, workspaces, ws_1, vms, images, the work dir; disk.img, run.sh
    assert len(lines) == 1 and "made 8 directories and files private" in lines[0] and str(home) in lines[0]
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(home / "workspaces" / "ws_1").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(disk).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(script).st_mode) == 0o600  # executable bits off
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(work).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(work / "rootfs" / "bin" / "sh").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(outside).st_mode) == 0o755  # the symlink's target is left alone
    assert stat.S_IMODE(os.stat(outside / "vmlinuz").st_mode) == 0o644
    assert os.path.islink(home / "guest")
    h.close()

    caplog.clear()
    make_harness(base)  # a second start: nothing to change, nothing logged
    assert [r for r in caplog.records if r.name == "chaser.datadir"] == []


def test_tighten_leaves_a_private_tree_alone(tmp_path):
    root = tmp_path / "home"
    assert make_private(root) == 0 and stat.S_IMODE(os.stat(root).st_mode) == 0o700
    (root / "f").write_text("x")
    os.chmod(root / "f", 0o400)
    assert tighten(root) == 0 and stat.S_IMODE(os.stat(root / "f").st_mode) == 0o400
    os.chmod(root / "f", 0o444)
    assert tighten(root) == 1 and stat.S_IMODE(os.stat(root / "f").st_mode) == 0o400


def test_the_sqlite_file_is_created_0600(tmp_path):
    previous = os.umask(0o022)  # even under a permissive umask (tests, a library user)
    try:
        Database(f"sqlite:///{tmp_path / 'db' / 'chaser.db'}").upgrade()
    finally:
        os.umask(previous)
    for path in (tmp_path / "db").iterdir():  # chaser.db and its -wal / -shm
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


def test_the_migration_blanks_the_env_earlier_versions_stored(tmp_path):
    url = f"sqlite:///{tmp_path / 'chaser.db'}"
    db = Database(url)
    with db.engine.begin() as connection:
        command.upgrade(alembic_config(url, connection), "0004_audit_events")
    with sqlite3.connect(tmp_path / "chaser.db") as raw:
        raw.execute("INSERT INTO accounts (id, name, created_at) VALUES ('personal', 'personal', '2026-01-01')")
        raw.execute("INSERT INTO sessions (id, account_id, session_type, status, ephemeral, env, created_at) "
                    "VALUES ('ses_old', 'personal', 'sandbox', 'terminated', 1, ?, '2026-01-01')",
                    (f'{{"TOKEN": "{SECRET}"}}',))
    db.upgrade()
    with sqlite3.connect(tmp_path / "chaser.db") as raw:
        assert raw.execute("SELECT env FROM sessions").fetchall() == [("{}",)]


def test_the_cli_config_is_0600_in_a_0700_directory(tmp_path):
    from chaser.cli.commands.server import write_cli_config
    from chaser.client import save_config

    previous = os.umask(0o022)  # the CLI runs under the user's umask
    try:
        save_config({"api_key": "sk_x"}, tmp_path / "cli" / "chaser" / "config.json")
        write_cli_config(tmp_path / "server" / "chaser" / "config.json", {"api_key": "sk_y"})
    finally:
        os.umask(previous)
    for directory in (tmp_path / "cli" / "chaser", tmp_path / "server" / "chaser"):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(directory / "config.json").st_mode) == 0o600
