"""`chaser console [--open] [--no-token]`: the web console's address, as a login link.

The link is `{api_url}/console/#token={api key}`: the key rides in the URL's fragment, which
a browser never sends to a server (so it is in no request, access log or Referer); the
console's page reads it once, keeps it in the tab's sessionStorage and removes it from the
address bar. Anyone holding the link holds the key: print it only where you would print the key.
"""

from __future__ import annotations

import sys

import typer

from chaser.cli.commands._common import GLOBAL_OPTIONS, fail

CONSOLE_PATH = "/console/"


def console_url(api_url: str, api_key: str | None) -> str:
    """The console's address on the server at `api_url`; with `api_key`, the login link."""
    base = api_url.rstrip("/") + CONSOLE_PATH
    return f"{base}#token={api_key}" if api_key else base


def console_command(
    open_browser: bool = typer.Option(False, "--open", help="Open the link in a web browser as well."),
    no_token: bool = typer.Option(False, "--no-token", help="Print the plain address (you type the key in)."),
) -> None:
    """Print the web console's login link (the API key in the URL fragment, never sent to the server)."""
    from chaser.client import resolve_settings

    settings = resolve_settings(GLOBAL_OPTIONS["api_url"], GLOBAL_OPTIONS["api_key"])
    if not no_token and not settings.api_key:
        fail("unauthorized", "no API key: set CHASER_API_KEY, pass --api-key, or run `chaser server` once "
                             "(it saves one in the config file); or use --no-token")
    url = console_url(settings.api_url, None if no_token else settings.api_key)
    print(url, flush=True)
    if not no_token:
        print("this link carries your API key: anyone with it has the key's access", file=sys.stderr)
    if open_browser:
        import webbrowser

        if not webbrowser.open(url):
            print("no web browser found here: open the link above", file=sys.stderr)
