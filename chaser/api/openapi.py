"""What `/openapi.json` needs beyond FastAPI's own: the endpoints it cannot
describe (WebSocket upgrades, the MCP ASGI app), validation errors as the
app answers them — `400 invalid_request` with the `{"code", "message"}` body,
not FastAPI's 422 (chaser/api/errors.py maps them) —, OpenAPI `links` from the
creates, and the request limits this server's configuration decides.
Checked by tests/integration/test_openapi_conformance.py (docs/api.md "Conformance")."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from chaser.config import Settings

_ERROR = {"$ref": "#/components/schemas/ErrorPublic"}
_SESSION = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}
_PORT = {"name": "port", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1, "maximum": 65535}}


def _error_responses(*codes: int) -> dict[str, Any]:
    return {str(code): {"description": "Error", "content": {"application/json": {"schema": _ERROR}}} for code in codes}


def _websocket(summary: str, description: str, parameters: list[dict[str, Any]], tag: str,
               operation_id: str) -> dict[str, Any]:
    return {"get": {
        "tags": [tag], "summary": summary, "description": description, "parameters": parameters,
        "operationId": operation_id,
        "responses": {"101": {"description": "Switching Protocols (WebSocket)"},
                      **_error_responses(400, 401, 403, 404, 409, 503),
                      "426": {"description": "`upgrade_required`: a plain HTTP request to a WebSocket endpoint",
                              "content": {"application/json": {"schema": _ERROR}}}},
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
            "schema": {"type": "object"}}}},
            "202": {"description": "A JSON-RPC notification or response was accepted (no body)"},
            "400": {"description": "Not a JSON-RPC request the server can parse (JSON-RPC error body)",
                    "content": {"application/json": {"schema": {"type": "object"}}}},
            **_error_responses(401, 413),
            "415": {"description": "`unsupported_media_type`: the request is not `application/json`",
                    "content": {"application/json": {"schema": _ERROR}}}},
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
        "pty", "pty_websocket"),
    "/v1/sessions/{session_id}/tunnel/{port}": _websocket(
        "Raw TCP tunnel to a sandbox port (WebSocket, binary frames)",
        "Used by `chaser forward`; 502 `port_not_listening` when nothing listens.", [_SESSION, _PORT], "forwarding",
        "tunnel_websocket"),
}


def install_extra_paths(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            _validation_errors_as_400(schema)
            schema["paths"].update(EXTRA_PATHS)
            _add_links(schema)
            _server_limits(schema, app.state.services.settings)
            _rate_limited(schema)
            if app.state.services.settings.public_url:
                schema["servers"] = [{"url": app.state.services.settings.public_url}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the schema


def _validation_errors_as_400(schema: dict[str, Any]) -> None:
    from chaser.api.routes import ERROR_DESCRIPTIONS

    for operations in schema["paths"].values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", {"description": ERROR_DESCRIPTIONS[400],
                                             "content": {"application/json": {"schema": _ERROR}}})
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)


# (operation that creates, its path, the path parameter its answer's `id` fills)
LINK_SOURCES = (
    ("post", "/v1/sessions", "session_id"),
    ("post", "/v1/workspaces", "workspace"),
    ("post", "/v1/workspaces/{workspace}/snapshots", "snapshot"),
)


def _add_links(schema: dict[str, Any]) -> None:
    """OpenAPI links from each create to the operations on what it created, so
    a client generator or a stateful tester (schemathesis) can follow them."""
    paths = schema["paths"]
    for method, source, parameter in LINK_SOURCES:
        operation = paths.get(source, {}).get(method)
        if operation is None:
            continue
        links: dict[str, Any] = {}
        for path, operations in paths.items():
            if "{" + parameter + "}" not in path:
                continue
            for target in operations.values():
                operation_id = target.get("operationId")
                if not operation_id:
                    continue
                parameters = {parameter: "$response.body#/id"}
                if "{workspace}" in source:
                    parameters["workspace"] = "$request.path.workspace"
                links[operation_id] = {"operationId": operation_id, "parameters": parameters}
        for status, response in operation.get("responses", {}).items():
            if status.startswith("2") and links:
                response["links"] = links


# Without a default workspace (CHASER_DEFAULT_WORKSPACE), a session needs a workspace or `ephemeral: true`.
WORKSPACE_OR_EPHEMERAL = {"anyOf": [
    {"required": ["workspace"], "properties": {"workspace": {"type": "string"}}},
    {"required": ["ephemeral"], "properties": {"ephemeral": {"const": True}}},
]}


def _server_limits(schema: dict[str, Any], settings: Settings) -> None:
    """What this server's configuration decides: the longest `ttl_seconds`, and whether a
    create that names neither a workspace nor `ephemeral: true` has a default workspace to use."""
    components = schema["components"]["schemas"]
    ttl = components["SessionCreate"]["properties"]["ttl_seconds"]
    for option in ttl.get("anyOf", [ttl]):
        if option.get("type") == "integer":
            option["maximum"] = settings.session_max_lifetime_s
    if settings.default_workspace:
        return
    for name in ("SessionCreate", "ExecCreate"):
        components[name].setdefault("allOf", []).append(WORKSPACE_OR_EPHEMERAL)
    body = schema["paths"]["/v1/sessions"]["post"].get("requestBody")
    if body is not None:  # no body at all is `400 workspace_required` too
        body["required"] = True
        body["content"]["application/json"]["schema"] = {"$ref": "#/components/schemas/SessionCreate"}


RATE_LIMITED = ("`rate_limited`: this API key made more requests than `CHASER_RATE_LIMIT_PER_MINUTE` allows "
                "(a token bucket of `x-ratelimit-limit` requests); retry after `Retry-After` seconds")
RATE_LIMIT_HEADERS = {
    "Retry-After": {"description": "Seconds until a request of this key would pass", "schema": {"type": "integer"}},
    "x-ratelimit-limit": {"description": "The key's bucket size (requests at once)", "schema": {"type": "integer"}},
    "x-ratelimit-remaining": {"description": "Requests left now", "schema": {"type": "integer"}},
    "x-ratelimit-reset": {"description": "Seconds until the bucket is full again (not a timestamp)",
                          "schema": {"type": "integer"}},
}


def _rate_limited(schema: dict[str, Any]) -> None:
    """`429 rate_limited` on every operation that takes an API key (those that can answer 401)."""
    for operations in schema["paths"].values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "401" not in responses:
                continue
            existing = responses.get("429")
            description = RATE_LIMITED if existing is None else f"{existing['description']}; or {RATE_LIMITED}"
            content = (existing or {}).get("content") or {"application/json": {"schema": _ERROR}}
            responses["429"] = {"description": description, "content": content,
                                "headers": {**(existing or {}).get("headers", {}), **RATE_LIMIT_HEADERS}}
