"""The whole server (chaser.assembly.create_app) over a FakeRuntime, behind a TestClient."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.fakes import FakeRuntime, FakeVM

TEST_RATE_LIMIT_PER_MINUTE = 1_000_000


def make_settings(tmp_path: Path, **overrides: Any):
    from chaser.config import Settings

    # Tests make many requests with one key at once: a limit they never reach unless they set one.
    overrides.setdefault("rate_limit_per_minute", TEST_RATE_LIMIT_PER_MINUTE)
    return Settings(home=tmp_path / "home", config_file=tmp_path / "config.json", **overrides)


def network_mode_of(settings) -> str:
    """What a runtime on this machine would resolve CHASER_NETWORK to (`auto`: isolated here)."""
    return "isolated" if settings.network == "auto" else settings.network


class Harness:
    """A TestClient over create_app(settings, FakeRuntime()), with an admin key."""

    def __init__(self, tmp_path: Path, *, runtime: FakeRuntime | None = None, **overrides: Any) -> None:
        from fastapi.testclient import TestClient

        from chaser.assembly import create_app

        self.settings = make_settings(tmp_path, **overrides)
        self.runtime = runtime or FakeRuntime(network_mode=network_mode_of(self.settings))
        self.app = create_app(self.settings, self.runtime, reaper_interval=3600)
        self.services = self.app.state.services
        self.client = TestClient(self.app, raise_server_exceptions=False)
        self.client.__enter__()
        self.closed = False
        self.admin_key = self.services.keys.create(name="admin", full_access=True).key
        self.client.headers["Authorization"] = f"Bearer {self.admin_key}"

    def key(self, *scopes: str, account_id: str = "personal") -> dict[str, str]:
        key = self.services.keys.create(account_id=account_id, scopes=list(scopes)).key
        return {"Authorization": f"Bearer {key}"}

    def session(self, **body: Any) -> dict:
        response = self.client.post("/v1/sessions", json={"ephemeral": True, **body})
        assert response.status_code == 201, response.text
        return response.json()

    def vm(self, session_id: str) -> FakeVM:
        return self.services.sessions.live[session_id].vm

    def run(self, function, *args: Any):
        """Call `function(*args)` (a coroutine function) on the app's event loop."""
        return self.client.portal.call(function, *args)

    def close(self) -> None:
        """Shut the app down (its lifespan ends: the runtime stops every VM). Idempotent."""
        if not self.closed:
            self.closed = True
            self.client.__exit__(None, None, None)
