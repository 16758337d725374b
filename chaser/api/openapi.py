"""Endpoints FastAPI cannot describe by itself (WebSocket upgrades, the MCP
ASGI app) added to `/openapi.json`, so the document lists the whole surface."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

_ERROR = {"$ref": "#/components/schemas/ErrorPublic"}
_SESSION = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}
_PORT = {"name": "port", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1, "maximum": 65535}}


def _error_responses(*codes: int) -> dict[str, Any]:
    return {str(code): {"description": "Error", "content": {"application/json": {"schema": _ERROR}}} for code in codes}


def _websocket(summary: str, description: str, parameters: list[dict], tag: str) -> dict[str, Any]:
    return {"get": {
        "tags": [tag], "summary": summary, "description": description, "parameters": parameters,
        "responses": {"101": {"description": "Switching Protocols (WebSocket)"}, **_error_responses(400, 401, 403, 404, 409)},
    }}


EXTRA_PATHS: dict[str, dict[str, Any]] = {
    "/v1/mcp": {"post": {
        "tags": ["mcp"],
        "summary": "MCP endpoint (JSON-RPC 2.0, stateless streamable HTTP)",
        "description": "Methods `initialize`, `tools/list`, `tools/call` (tools: `terminal`, `sessions_list`, "
                       "`session_create`, `session_terminate`, `workspaces_list`, `workspace_create`). "
                       "Answers JSON; see docs/mcp.md.",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["jsonrpc", "method"],
            "properties": {"jsonrpc": {"const": "2.0"}, "id": {"type": ["integer", "string"]},
                           "method": {"type": "string"}, "params": {"type": "object"}}}}}},
        "responses": {"200": {"description": "JSON-RPC response", "content": {"application/json": {
            "schema": {"type": "object"}}}}, **_error_responses(401)},
    }},
    "/v1/sessions/{session_id}/pty": _websocket(
        "Interactive PTY (WebSocket)",
        "Binary frames: terminal bytes both ways. Text frames: JSON control — client "
        "`{type: resize, rows, cols}`, `{type: signal, signal}`, `{type: exec, command}` (exec mode); "
        "server `{type: exit, exit_code}` before close. See docs/pty-and-forwarding.md.",
        [_SESSION,
         {"name": "mode", "in": "query", "schema": {"enum": ["human", "agent", "exec"], "default": "human"}},
         {"name": "rows", "in": "query", "schema": {"type": "integer"}},
         {"name": "cols", "in": "query", "schema": {"type": "integer"}},
         {"name": "token", "in": "query", "schema": {"type": "string"}, "description": "API key, for browsers"}],
        "pty"),
    "/v1/sessions/{session_id}/tunnel/{port}": _websocket(
        "Raw TCP tunnel to a sandbox port (WebSocket, binary frames)",
        "Used by `chaser forward`; 502 `port_not_listening` when nothing listens.", [_SESSION, _PORT], "forwarding"),
}


def install_extra_paths(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema["paths"].update(EXTRA_PATHS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
