"""MCP (Model Context Protocol): the endpoint `POST /v1/mcp` and `chaser mcp serve` (stdio).

The tools call the Chaser REST API over HTTP with the caller's own API key.

- `schemas`: the tool declarations; `arguments`: their argument checks;
  `tools`: the tool bodies; `files`: the `terminal` tool's xml file operations;
  `results`: result shapes; `registry`: tool name → declaration, check and body.
- `server`: the MCP server over the registry; `asgi.MCPEndpoint`: the ASGI app the API
  mounts; `stdio`: the same server over stdio for local agents.

This package imports only `chaser.client`, `chaser` (for `__version__`), itself, the `mcp`
SDK and the standard library: never the service layer.
"""

from chaser.mcp.asgi import MCPEndpoint
from chaser.mcp.server import build_server

__all__ = ["MCPEndpoint", "build_server"]
