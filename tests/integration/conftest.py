"""A real `chaser server` process for integration tests.

Each server gets its own CHASER_HOME (database, VM directories, workspaces) whose
`guest/` is a symlink to the default home's, so the built guest assets and the
template snapshot are reused; and its own CHASER_CONFIG. It runs in its own
process group and is killed by that group at the end."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from chaser.config import Settings
from tests.support.cluster import qemu_pids_under
from tests.support.harness import TEST_RATE_LIMIT_PER_MINUTE
from tests.support.net import free_port
from tests.support.wait import WaitTimeout, wait_until

REPO = Path(__file__).resolve().parents[2]



@dataclass
class ServerProcess:
    home: Path
    config_file: Path
    port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    args: list[str] = field(default_factory=list)  # more `chaser server` flags
    ca_bundle: Path | None = None  # set: the server speaks https, with a certificate this file vouches for

    @property
    def url(self) -> str:
        return f"{'https' if self.ca_bundle else 'http'}://127.0.0.1:{self.port}"

    def verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=str(self.ca_bundle)) if self.ca_bundle else True

    @property
    def api_key(self) -> str:
        return json.loads(self.config_file.read_text())["api_key"]

    def start(self, timeout: float = 60) -> ServerProcess:
        default_guest = Settings(home=Settings().home).guest_dir
        self.home.mkdir(parents=True, exist_ok=True)
        if not (self.home / "guest").exists():
            (self.home / "guest").symlink_to(default_guest)
        env = {**os.environ, "CHASER_HOME": str(self.home), "CHASER_CONFIG": str(self.config_file),
               "PYTHONUNBUFFERED": "1",  # many requests with one key at once: a limit tests reach only by setting one
               "CHASER_RATE_LIMIT_PER_MINUTE": str(TEST_RATE_LIMIT_PER_MINUTE),
               # No E2B ingress unless a test asks: test servers must not fight over port 49983.
               "CHASER_E2B_INGRESS_PORT": "0", **self.extra_env}
        self.log_path = self.home / f"server-{self.port}-{int(time.time() * 1000)}.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chaser.cli.commands.server", "--port", str(self.port), *self.args],
            cwd=REPO, env=env, stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        def healthy() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()}")
            return httpx.get(f"{self.url}/health", timeout=1, verify=self.verify()).status_code == 200

        try:
            wait_until(healthy, timeout, interval=0.1, ignore=(httpx.HTTPError,))
        except WaitTimeout:
            raise RuntimeError(f"server did not start: {self.log()}") from None
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path and self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL, *, group: bool = True, timeout: float = 60) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            if group:
                os.killpg(self.process.pid, sig)
            else:
                os.kill(self.process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """Graceful (SIGTERM: the server stops its VMs), then the whole group for good measure.
        A server that had to be SIGKILLed left its VMs running (a restart would adopt them): they
        are stopped too, by PID."""
        was_running = self.process is not None and self.process.poll() is None
        self.kill(signal.SIGTERM, group=False)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if was_running and self.process.returncode == -signal.SIGKILL:
            for pid in qemu_pids_under(self.home):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def client(self, key: str | None = None, timeout: float = 300) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, verify=self.verify(),
                            headers={"Authorization": f"Bearer {key or self.api_key}"})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("chaser-server")
    srv = ServerProcess(home=base / "home", config_file=base / "config.json").start()
    yield srv
    srv.stop()


@pytest.fixture
def server_factory(tmp_path):
    servers: list[ServerProcess] = []

    def make(**env: str) -> ServerProcess:
        srv = ServerProcess(home=tmp_path / "home", config_file=tmp_path / "config.json", extra_env=env)
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server of our own for the run (tests/support/postgres.py); a test makes
    its own database with `postgres.create_database()`. A missing server binary fails, never skips."""
    from tests.support.postgres import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()


# The VM fixtures live in this conftest's scope, not imported into each module: a session
# fixture imported into two modules is two fixtures, i.e. two Runtimes (two warm pools),
# and the first one torn down would see the other's VMs as leftovers.
from tests.integration.vm_fixtures import runtime, settings, vm  # noqa: E402, F401
