"""The web console's files: plain ES modules, HTML and CSS in `static/`, served by
`chaser server` at `/console/` (chaser/api/console.py). `static/vendor/` holds what is taken
from npm (xterm.js), copied there by console/vendor.py. Nothing here runs on the server."""

from __future__ import annotations

from pathlib import Path

__all__ = ["STATIC_DIR"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
