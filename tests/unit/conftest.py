"""Unit-test fixtures: the API over a fake runtime (`harness`, `make_harness`, `fake_runtime`),
and the in-guest agent run on the host as a subprocess (`agent`, `make_agent`)."""

import atexit
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import FakeRuntime, Harness
from tests.support.net import free_port

REPO = Path(__file__).resolve().parents[2]
READY = "CHASER-AGENT-READY"
_GUEST_COPY = None


def guest_copy() -> str:
    """Lay the agent out as the guest does (/opt/chaser/chaser_agent), which also
    proves it depends on nothing else from the chaser package."""
    global _GUEST_COPY
    if _GUEST_COPY is None:
        import tempfile
        base = tempfile.mkdtemp(prefix="chaser-agent-")
        shutil.copytree(REPO / "chaser" / "agent", os.path.join(base, "chaser_agent"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        atexit.register(shutil.rmtree, base, True)
        _GUEST_COPY = base
    return _GUEST_COPY


class AgentProcess:
    def __init__(self, sandbox_root: str = "/"):
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        # CHASER_AGENT_PYTHON lets the suite run the agent under another interpreter
        # (e.g. a venv with the guest's aiohttp 3.8).
        python = os.environ.get("CHASER_AGENT_PYTHON", sys.executable)
        self.proc = subprocess.Popen(
            [python, "-m", "chaser_agent", "--port", str(self.port), "--token", self.token,
             "--sandbox-root", sandbox_root],
            cwd="/", env={**os.environ, "PYTHONPATH": guest_copy()},
            stdout=subprocess.PIPE, start_new_session=True,  # own group: killed by pgid
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if READY.encode() in line:
                    return
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"agent did not start (last line {line!r})")

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # agent kills its user processes
                self.proc.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)
        self.proc.stdout.close()


@pytest.fixture(scope="session")
def agent():
    a = AgentProcess("/")
    yield a
    a.stop()


@pytest.fixture
def make_agent():
    started = []

    def factory(sandbox_root: str = "/") -> AgentProcess:
        a = AgentProcess(sandbox_root)
        started.append(a)
        return a

    yield factory
    for a in started:
        a.stop()


# --- the API over a fake runtime -------------------------------------------------------------

@pytest.fixture
def fake_runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def make_harness(tmp_path):
    """`make_harness(**settings)`: a Harness with those settings, closed at the end of the test.
    `path=` picks its directory (default: a fresh one under tmp_path); the same path twice is
    a restart of the server over the same database."""
    made: list[Harness] = []

    def factory(path=None, **overrides) -> Harness:
        h = Harness(path if path is not None else tmp_path / f"harness-{len(made)}", **overrides)
        made.append(h)
        return h

    yield factory
    for h in made:
        h.close()


@pytest.fixture
def harness(make_harness) -> Harness:
    return make_harness()


# --- the CLI against a fake API (tests/support/fake_chaser.py) -------------------------------

@pytest.fixture
def fake():
    from tests.support.fake_chaser import FakeChaser, serving

    with serving(FakeChaser()) as state:
        yield state


@pytest.fixture
def config_file(tmp_path):
    return tmp_path / "chaser" / "config.json"


@pytest.fixture
def cli(fake, config_file, monkeypatch):
    """Run `chaser ARGS…` in-process against the fake server; the config file holds URL and key."""
    import json

    from typer.testing import CliRunner

    from chaser.cli import main

    config_file.parent.mkdir()
    config_file.write_text(json.dumps({"api_url": fake.url, "api_key": "test-key"}))
    monkeypatch.setenv("CHASER_CONFIG", str(config_file))
    monkeypatch.delenv("CHASER_API_URL", raising=False)
    monkeypatch.delenv("CHASER_API_KEY", raising=False)
    runner = CliRunner()

    def run(*args: str, input: bytes | str | None = None, env: dict | None = None):
        return runner.invoke(main.app, list(args), input=input, env=env)

    return run
