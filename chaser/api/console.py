"""`/console/`: the web console's static files (chaser/console/static), on the API's own origin.

The console is a client of the public API like any other: its pages call `/v1` with the
API key as a Bearer header and open the PTY WebSocket with `?token=`. Nothing here reads
a key or serves data. Every answer under `/console` carries a strict Content-Security-Policy
(scripts only from this origin, no inline script, no framing) and is revalidated on each
load (`no-cache` with the ETag StaticFiles sets), so an upgraded server serves its own files.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.datastructures import MutableHeaders
from starlette.responses import RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chaser.console import STATIC_DIR

__all__ = ["CONTENT_SECURITY_POLICY", "PREFIX", "install_console"]

PREFIX = "/console"
# xterm.js writes <style> elements for its theme and cell sizes: styles may be inline, scripts may not.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-cache",
}


class ConsoleHeaders:
    """Adds HEADERS to every response of the wrapped app (the static files, their 404s included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_console(app: FastAPI) -> None:
    """Serve the console at `/console/` (`/console` redirects there)."""

    @app.get(PREFIX, include_in_schema=False)
    async def console_root(request: Request) -> RedirectResponse:
        query = request.url.query
        return RedirectResponse(f"{PREFIX}/" + (f"?{query}" if query else ""), status_code=307)

    app.mount(PREFIX, ConsoleHeaders(StaticFiles(directory=STATIC_DIR, html=True)), name="console")
