"""`chaser mcp serve`: the MCP tools over stdio, for agents that start local MCP servers
(Claude Code, Cursor, Codex).

The very server of `POST /v1/mcp` (`chaser.mcp.server.build_server`: one set of tools) on the
SDK's stdio transport. Every tool call goes to a Chaser server's REST API through
`chaser.client` with the URL and key given here, so its auth and scopes apply as over HTTP.
stdout carries JSON-RPC only; diagnostics go to stderr.
"""

from __future__ import annotations

from collections.abc import Mapping

import anyio
from mcp.server.stdio import stdio_server

from chaser.client import ChaserClient
from chaser.mcp.server import build_server

__all__ = ["serve_stdio"]


def serve_stdio(api_url: str, api_key: str, *, headers: Mapping[str, str] | None = None,
                ca_bundle: str | None = None) -> None:
    """Serve MCP on this process's stdin/stdout until the client closes stdin."""
    headers = dict(headers or {})
    server = build_server(client_factory=lambda: ChaserClient(base_url=api_url, api_key=api_key,
                                                              headers=headers or None, ca_bundle=ca_bundle))

    async def main() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(main)
