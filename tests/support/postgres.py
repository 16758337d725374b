"""A real PostgreSQL server for tests, from Debian's `postgresql` package (the Makefile installs it).

`initdb` into a fresh directory owned by the `postgres` system user (the server refuses to run
as root), listening on 127.0.0.1 at a free port and on a unix socket in that directory, with a
random password (scram-sha-256). Stopped through its own data directory (`pg_ctl stop -m fast`,
then the PID in postmaster.pid), and the directory deleted. Never the system cluster."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from tests.support.net import free_port
from tests.support.wait import wait_until

PG_ROOT = Path("/usr/lib/postgresql")
SYSTEM_USER = "postgres"  # made by the package; owns the data directory and runs the server
SUPERUSER = "chaser"


def pg_bin_dir() -> Path:
    """The newest installed server's bin directory (/usr/lib/postgresql/<major>/bin)."""
    found = [path.parent for path in PG_ROOT.glob("*/bin/initdb")]
    if not found:
        raise RuntimeError(f"no PostgreSQL server under {PG_ROOT}: `make setup` installs Debian's postgresql")
    return max(found, key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else -1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class PostgresServer:
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="chaser-pg-")))
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    pid: int | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """A server binary as the `postgres` user (runuser: no shell, no login environment)."""
        command = ["runuser", "-u", SYSTEM_USER, "--", str(pg_bin_dir() / args[0]), *args[1:]]
        result = subprocess.run(command, cwd=self.root, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr or result.stdout}\n"
                               f"{self.log()}")
        return result

    def start(self) -> PostgresServer:
        user = pwd.getpwnam(SYSTEM_USER)
        os.chown(self.root, user.pw_uid, user.pw_gid)
        os.chmod(self.root, 0o700)
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        os.chown(password_file, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, f"--pwfile={password_file}",
                  "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync")
        password_file.unlink()
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60",
                  "-o", options, "start")
        self.pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; its SQLAlchemy URL."""
        import psycopg

        name = name or "chaser_" + secrets.token_hex(6)
        with psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, password=self.password,
                             dbname="postgres", autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Fast shutdown of this server only (by its data directory, then its PID); the directory goes."""
        try:
            if self.pid is not None and _alive(self.pid):
                try:
                    self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop")
                except (RuntimeError, subprocess.TimeoutExpired):
                    os.kill(self.pid, signal.SIGQUIT)  # immediate shutdown of this postmaster
                wait_until(lambda: not _alive(self.pid), 30, message=f"postgres {self.pid} stopped")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
