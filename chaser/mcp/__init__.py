"""MCP (Model Context Protocol): the endpoint `POST /v1/mcp` and `chaser mcp serve` (stdio).

The tools (`chaser.mcp.server`) call the Chaser REST API over HTTP with the caller's own
API key; `chaser.mcp.asgi.MCPEndpoint` is the ASGI app the API mounts, `chaser.mcp.stdio`
serves the same tools over stdio for local agents. This package
imports only `chaser.client`, the `mcp` SDK and the standard library.
"""

from chaser.mcp.asgi import MCPEndpoint
from chaser.mcp.server import build_server

__all__ = ["MCPEndpoint", "build_server"]
