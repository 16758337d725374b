"""Assertions on the API's answers."""

from __future__ import annotations


def assert_error(response, status: int, code: str) -> dict:
    """`response` is the API's one error shape: `status`, {code, message} with `code`, a request id."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message"}, body
    assert body["code"] == code, body
    assert response.headers.get("x-request-id")
    return body
