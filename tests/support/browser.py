"""Headless Chromium for tests: Debian's `chromium` (/usr/bin/chromium), driven by
Playwright (never a browser Playwright downloads). A fresh profile each time;
host names can be mapped to loopback (`map_to_loopback`) so nothing leaves the machine.

    with chromium(map_to_loopback=["*.chaser.test"]) as browser:
        page = browser.new_page()
        page.goto(url)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "chromium", "chromium_missing"]

CHROMIUM = os.environ.get("CHASER_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
    "--no-default-browser-check", "--metrics-recording-only", "--disable-features=Translate,MediaRouter",
)


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (Debian package `chromium`, installed by `make setup`)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the `playwright` package is missing (dev extras of pyproject.toml)"
    return None


@contextlib.contextmanager
def chromium(*, map_to_loopback: Sequence[str] = (), extra_args: Sequence[str] = (),
             **context_options: Any) -> Iterator[Any]:
    """A headless Chromium browser context (playwright `BrowserContext`) with its own
    fresh user-data-dir; `map_to_loopback` host patterns (e.g. `*.chaser.test`)
    resolve to 127.0.0.1 and every other name fails to resolve."""
    from playwright.sync_api import sync_playwright

    rules = [f"MAP {pattern} 127.0.0.1" for pattern in map_to_loopback]
    rules += ["MAP * ~NOTFOUND", "EXCLUDE 127.0.0.1", "EXCLUDE localhost"]
    args = [*CHROMIUM_ARGS, f"--host-resolver-rules={', '.join(rules)}", *extra_args]
    profile = tempfile.mkdtemp(prefix="chaser-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=args, **context_options)
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
