"""Several machines on one: `chaser node` processes on 127.0.0.2, 127.0.0.3, … and `chaser server`
API replicas (CHASER_LOCAL_RUNTIME=false) on 127.0.0.1, sharing one PostgreSQL database
(tests/support/postgres.py). Each process is its own session (process group): it is stopped by
its PID, and a node killed with SIGKILL has its VMs stopped by PID too (the QEMUs holding files
under its data dir). Used by tests/integration/test_scaleout.py and bench/scaleout.py."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.net import free_port
from tests.support.wait import WaitTimeout, wait_until

REPO = Path(__file__).resolve().parents[2]
NODE_TOKEN = "test-node-token-" + secrets.token_hex(8)


def qemu_pids_under(home: Path) -> list[int]:
    """QEMU processes holding files under `home` (a jailed QEMU gets its files as descriptors)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"qemu-system" not in (entry / "cmdline").read_bytes():
                continue
            targets = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        if any(target.startswith(str(home)) for target in targets):
            pids.append(int(entry.name))
    return pids


@dataclass
class Process:
    """One `chaser node` or API replica."""

    name: str
    home: Path
    host: str
    env: dict[str, str]
    node: bool
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    logs: list[Path] = field(default_factory=list)
    tls: tuple[Path, Path] | None = None  # (certificate, key): a node serving HTTPS
    args: list[str] = field(default_factory=list)  # more arguments of `chaser node`

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        if self.node:
            tls = ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])] if self.tls else []
            return [sys.executable, "-m", "chaser.cli.main", "node", "--listen", f"{self.host}:{self.port}",
                    "--advertise-url", self.url, "--data-dir", str(self.home), *tls, *self.args]
        return [sys.executable, "-m", "chaser.cli.commands.server", "--host", self.host, "--port", str(self.port)]

    def start(self, timeout: float = 120) -> Process:
        self.home.mkdir(parents=True, exist_ok=True)
        if self.node and not (self.home / "guest").exists():  # the built guest, shared read-only
            from chaser.config import Settings

            (self.home / "guest").symlink_to(Settings(home=Settings().home).guest_dir)
        log = self.home / f"{self.name}-{time.monotonic_ns()}.log"
        self.logs.append(log)
        self.process = subprocess.Popen(self.argv(), cwd=REPO, env={**os.environ, **self.env},
                                        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log()}")
            verify = ssl.create_default_context(cafile=str(self.tls[0])) if self.tls else True
            return httpx.get(f"{self.url}/readyz", timeout=2, verify=verify).status_code == 200

        try:
            wait_until(ready, timeout, interval=0.1, ignore=(httpx.HTTPError,), message=f"{self.name} is ready")
        except WaitTimeout:
            raise RuntimeError(f"{self.name} did not become ready: {self.log()}") from None
        return self

    def log(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-4000:] for path in self.logs if path.exists())

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int, *, timeout: float = 90) -> None:
        """`sig` to the process itself (its VMs run in sessions of their own); wait for it to end."""
        if not self.alive:
            return
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """For good: its VMs too (a node keeps them over SIGTERM: they are stopped by PID)."""
        self.signal(signal.SIGTERM)
        if self.node:
            for pid in qemu_pids_under(self.home):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@dataclass
class Cluster:
    base: Path
    database_url: str
    admin_key: str = field(default_factory=lambda: "sk_" + secrets.token_urlsafe(32))
    nodes: list[Process] = field(default_factory=list)
    replicas: list[Process] = field(default_factory=list)
    common_env: dict[str, str] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        return {"CHASER_DATABASE_URL": self.database_url, "CHASER_NODE_TOKEN": NODE_TOKEN,
                "CHASER_E2B_INGRESS_PORT": "0", "PYTHONUNBUFFERED": "1", **self.common_env, **extra}

    def add_node(self, host: str, *, tls: tuple[Path, Path] | None = None, args: tuple[str, ...] = (),
                 **env: str) -> Process:
        index = len(self.nodes) + 1
        node = Process(name=f"node{index}", home=self.base / f"node{index}", host=host, node=True,
                       env=self.env(CHASER_NODE_NAME=f"node{index}", CHASER_WARM_POOL_SIZE="0", **env),
                       tls=tls, args=list(args))
        self.nodes.append(node)
        return node.start()

    def add_replica(self, **env: str) -> Process:
        index = len(self.replicas) + 1
        home = self.base / f"api{index}"
        replica = Process(name=f"api{index}", home=home, host="127.0.0.1", node=False,
                          env=self.env(CHASER_LOCAL_RUNTIME="false", CHASER_ADMIN_KEY=self.admin_key,
                                       CHASER_HOME=str(home), CHASER_CONFIG=str(home / "cli.json"), **env))
        self.replicas.append(replica)
        return replica.start()

    def client(self, process: Process, timeout: float = 300) -> httpx.Client:
        return httpx.Client(base_url=process.url, timeout=timeout,
                            headers={"Authorization": f"Bearer {self.admin_key}"})

    def stop(self) -> None:
        for process in [*self.replicas, *self.nodes]:
            process.stop()
