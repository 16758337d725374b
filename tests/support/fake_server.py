"""A real `chaser server` process over the fake runtime (no VM): the whole app (chaser.assembly.create_app)
served by uvicorn on 127.0.0.1, configured by CHASER_* as `chaser server` is. For tests of what several
server processes sharing one database do (tests/integration/test_nodes.py).

    python -m tests.support.fake_server PORT

The first start on a home writes an admin key to `$CHASER_HOME/admin-key` (0600)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import uvicorn

from chaser.assembly import create_app
from chaser.config import Settings
from tests.support.fakes import FakeRuntime
from tests.support.harness import network_mode_of

ADMIN_KEY_FILE = "admin-key"


def main(port: int) -> None:
    settings = Settings()
    app = create_app(settings, FakeRuntime(network_mode=network_mode_of(settings)))
    key_file = Path(settings.home) / ADMIN_KEY_FILE
    if not key_file.exists():
        key = app.state.services.keys.create(name="admin", full_access=True).key
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(key)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="info")


if __name__ == "__main__":
    main(int(sys.argv[1]))
