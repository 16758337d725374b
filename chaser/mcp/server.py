"""The MCP server: tools/list and tools/call over the tool registry, for HTTP and stdio alike.

Every tool calls the Chaser REST API over HTTP (`chaser.client`) with the caller's own
API key, so the API's auth, scopes and account checks apply unchanged. Nothing here
imports the service layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
from mcp import types
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

from chaser import __version__
from chaser.client import ChaserClient

# Also importable from here: tests/unit/test_network_policy.py takes both from this module.
from chaser.mcp.arguments import parse_terminal_arguments
from chaser.mcp.registry import TOOLS_BY_NAME, ClientFactory, call_tool, tool_declarations

__all__ = [
    "ACCOUNT_SCOPE_KEY",
    "API_KEY_SCOPE_KEY",
    "BASE_URL_SCOPE_KEY",
    "HEADERS_SCOPE_KEY",
    "TLS_SCOPE_KEY",
    "build_server",
    "call_tool",
    "parse_terminal_arguments",
]

# The ASGI wrapper (chaser.mcp.asgi) puts the caller's key and the API base URL here.
API_KEY_SCOPE_KEY = "chaser.mcp.api_key"
BASE_URL_SCOPE_KEY = "chaser.mcp.base_url"
ACCOUNT_SCOPE_KEY = "chaser.mcp.account"
# Headers the tools' API calls carry (the caller's Host and scheme, so the URLs in the answers are
# the caller's), and the TLS context that trusts this server's own certificate over loopback.
HEADERS_SCOPE_KEY = "chaser.mcp.headers"
TLS_SCOPE_KEY = "chaser.mcp.tls"

SERVER_NAME = "chaser"
INSTRUCTIONS = ("Sandboxes in microVMs. Use the `terminal` tool with a `workspace` (files persist) or "
                "`ephemeral: true` (a scratch session); reuse the returned session_id in follow-up "
                "calls, and end a scratch session with `session_terminate` when done.")


def _client_factory(request: Any) -> ClientFactory:
    scope = getattr(request, "scope", None) or {}
    api_key = scope.get(API_KEY_SCOPE_KEY)
    base_url = scope.get(BASE_URL_SCOPE_KEY)
    if not api_key or not base_url:
        # Never let ChaserClient fall back to env/config credentials (the server's own key).
        raise MCPError(types.INTERNAL_ERROR, "the MCP endpoint was reached without the Chaser ASGI wrapper")
    account = scope.get(ACCOUNT_SCOPE_KEY)
    headers = {**(scope.get(HEADERS_SCOPE_KEY) or {}), **({"X-Chaser-Account": account} if account else {})}
    tls = scope.get(TLS_SCOPE_KEY)
    return lambda: ChaserClient(base_url=base_url, api_key=api_key, headers=headers or None, ssl_context=tls)


def build_server(client_factory: ClientFactory | None = None) -> Server[Any]:
    """The low-level MCP server: tools/list and tools/call over the Chaser REST API.

    Without `client_factory` each call's client comes from the HTTP request (the caller's key,
    put in the ASGI scope by chaser.mcp.asgi); with it (the stdio server, chaser.mcp.stdio)
    every call uses that factory. The tools are the same either way."""

    async def list_tools(_ctx: Any, _params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tool_declarations())

    async def handle_call(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        factory = client_factory or _client_factory(ctx.request)
        # The client is synchronous and calls back into this very server: keep the event loop free.
        return await anyio.to_thread.run_sync(call_tool, factory, params.name, params.arguments,
                                              abandon_on_cancel=True)

    def input_schema(name: str) -> Mapping[str, Any] | None:
        tool = TOOLS_BY_NAME.get(name)
        return tool.declaration.input_schema if tool else None

    return Server(
        SERVER_NAME,
        version=__version__,
        title="Chaser",
        instructions=INSTRUCTIONS,
        get_tool_input_schema=input_schema,
        on_list_tools=list_tools,
        on_call_tool=handle_call,
    )
