"""Error mapping, validation → 400 shapes, request ids, the OpenAPI document."""

from __future__ import annotations

import pytest

from tests.support import assert_error


def test_request_id_is_echoed_or_generated(harness):
    response = harness.client.get("/v1/sessions", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    generated = harness.client.get("/v1/sessions").headers["x-request-id"]
    assert generated.startswith("req_")
    bogus = harness.client.get("/v1/sessions", headers={"x-request-id": "bad id\twith spaces"})
    assert bogus.headers["x-request-id"].startswith("req_")


def test_routing_errors_are_json(harness):
    assert_error(harness.client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(harness.client.put("/v1/sessions"), 405, "method_not_allowed")


@pytest.mark.parametrize("body", [
    b"{not json",
    b"[1, 2]",
    b'{"command": 5}',
    b'{"command": ""}',
    b'{"command": "   "}',
    b'{"command": "ls", "unknown": 1}',
    b'{"command": "ls", "timeout_ms": 0}',
    b'{"command": "ls", "timeout_ms": -5}',
    b'{"command": "ls", "timeout_ms": 86400001}',
    b'{"command": "ls", "timeout_ms": "100"}',
    b'{"command": "ls", "background": "yes"}',
    b'{"command": "ls", "env": {"A": 1}}',
    b'{"command": "ls", "env": {"A=B": "x"}}',
    b'{"command": "ls", "cwd": "/tmp\\u0000x"}',
    b'{}',
])
def test_exec_bad_input_is_400(harness, body):
    session = harness.session()
    response = harness.client.post(f"/v1/sessions/{session['id']}/exec", content=body,
                                   headers={"Content-Type": "application/json"})
    assert_error(response, 400, "invalid_request")


def test_huge_command_is_400(harness):
    session = harness.session()
    response = harness.client.post(f"/v1/sessions/{session['id']}/exec", json={"command": "x" * (64 * 1024 + 1)})
    assert_error(response, 400, "invalid_request")
    ok = harness.client.post(f"/v1/sessions/{session['id']}/exec", json={"command": "echo " + "y" * 1000})
    assert ok.status_code == 200


def test_unknown_fields_on_every_body_are_400(harness):
    assert_error(harness.client.post("/v1/sessions", json={"ephemeral": True, "bogus": 1}), 400, "invalid_request")
    assert_error(harness.client.post("/v1/workspaces", json={"nme": "x"}), 400, "invalid_request")
    assert_error(harness.client.post("/v1/keys", json={"scope": []}), 400, "invalid_request")
    assert_error(harness.client.post("/v1/exec", json={"command": "ls", "ephemeral": True, "x": 1}),
                 400, "invalid_request")


def test_unhandled_error_is_500_json_with_request_id(harness):
    session = harness.session()
    response = harness.client.post(f"/v1/sessions/{session['id']}/exec", json={"command": "boom"},
                                   headers={"x-request-id": "trace-1"})
    body = assert_error(response, 500, "internal_error")
    assert response.headers["x-request-id"] == "trace-1"
    assert "trace-1" in body["message"]


def test_openapi_documents_every_endpoint(harness):
    spec = harness.client.get("/openapi.json").json()
    paths = spec["paths"]
    expected = {
        ("/v1/sessions", "post"), ("/v1/sessions", "get"), ("/v1/sessions/{session_id}", "get"),
        ("/v1/sessions/{session_id}", "delete"), ("/v1/sessions/bulk-terminate", "post"),
        ("/v1/sessions/{session_id}/self-test", "post"), ("/v1/exec", "post"),
        ("/v1/sessions/{session_id}/exec", "post"), ("/v1/sessions/{session_id}/commands", "get"),
        ("/v1/sessions/{session_id}/commands/{command_id}", "get"),
        ("/v1/sessions/{session_id}/commands/{command_id}/stdin", "post"),
        ("/v1/sessions/{session_id}/commands/{command_id}/kill", "post"),
        ("/v1/sessions/{session_id}/commands/{command_id}/stream", "get"),
        ("/v1/sessions/{session_id}/upload", "post"), ("/v1/sessions/{session_id}/download", "get"),
        ("/v1/workspaces", "post"), ("/v1/workspaces", "get"), ("/v1/workspaces/{workspace}", "get"),
        ("/v1/workspaces/{workspace}", "delete"), ("/v1/keys", "get"), ("/v1/keys", "post"),
        ("/v1/keys/{key_id}", "delete"), ("/v1/images", "get"), ("/v1/images", "post"),
        ("/v1/images/{ref}", "delete"), ("/v1/images/prune", "post"), ("/v1/sessions/{session_id}/resize", "post"),
    }
    # WebSocket upgrades, MCP and the gateway answer other shapes; they must be listed all the same.
    for path, method in {("/v1/mcp", "post"), ("/v1/sessions/{session_id}/pty", "get"),
                         ("/v1/sessions/{session_id}/tunnel/{port}", "get"),
                         ("/s/{session_id}/forward/{port}/{path}", "get")}:
        assert method in paths.get(path, {}), (path, method)
    for path, method in expected:
        assert method in paths.get(path, {}), (path, method)
        operation = paths[path][method]
        ok = operation["responses"]["200"]["content"]
        assert ok, (path, method)
        # 401 everywhere; 400 (validation, as the app answers it: never FastAPI's 422) where there is input.
        assert "401" in operation["responses"] and "422" not in operation["responses"], (path, method)
        if operation.get("parameters") or operation.get("requestBody"):
            assert "400" in operation["responses"], (path, method)
    json_schema = paths["/v1/sessions"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert json_schema == {"$ref": "#/components/schemas/SessionPublic"}
    stream = paths["/v1/sessions/{session_id}/commands/{command_id}/stream"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    assert "multipart/form-data" in paths["/v1/sessions/{session_id}/upload"]["post"]["requestBody"]["content"]
    assert spec["components"]["schemas"]["ErrorPublic"]["required"] == ["code", "message"]
