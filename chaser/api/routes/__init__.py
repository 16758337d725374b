"""One router per resource, and how a route documents the errors it can answer.

Every error is the `{"code", "message"}` body (ErrorPublic). A route lists the
statuses it can give with `error_responses()` (its router lists those all its
routes share); validation errors, which FastAPI would document as 422, are
answered `400 invalid_request` and documented as such (chaser/api/openapi.py).
"""

from __future__ import annotations

from typing import Any

from chaser.models import ErrorPublic

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Invalid request: `invalid_request` (malformed JSON, wrong types, unknown fields, a value out of range) "
         "or a more specific code",
    401: "Missing or invalid API key (`unauthorized`)",
    403: "The key lacks the scope, or the account is not its own (`forbidden`)",
    404: "Not found (`not_found`, `session_not_found`, …)",
    409: "Conflict (`conflict`, `session_not_running`, …)",
    413: "Over the size limit (`payload_too_large`)",
    429: "The account is at its limit of concurrent sessions (`quota_exceeded`, `CHASER_MAX_SESSIONS_PER_ACCOUNT`); "
         "nothing was started",
    502: "An upstream failed (`image_pull_failed`, `port_not_listening`)",
    503: "The VM runtime could not serve the request (`vm_crashed`, `agent_unavailable`, …)",
    507: "The host's disk cannot take the saved state (`insufficient_storage`); nothing changed",
}
# What FastAPI's `responses=` takes.
Responses = dict[int | str, dict[str, Any]]
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying (with `capacity_exhausted`)",
                               "schema": {"type": "integer"}}}


def error_responses(*statuses: int | tuple[int, str] | tuple[int, str, dict[str, Any]]) -> Responses:
    """`responses=` entries for these statuses, each with the `{"code", "message"}` body: a status
    alone takes its standard description, `(status, description[, headers])` its own."""
    entries: Responses = {}
    for item in statuses:
        status, description, headers = (item, ERROR_DESCRIPTIONS[item], None) if isinstance(item, int) else (
            item[0], item[1], item[2] if len(item) > 2 else None)
        entries[status] = {"model": ErrorPublic, "description": description,
                           **({"headers": headers} if headers else {})}
    return entries


# Every authenticated route (router level).
AUTH_ERROR_RESPONSES = error_responses(401, 403)
ERROR_RESPONSES = error_responses(400, 401, 403, 404, 409)
# A route on a running session: unknown (404), not running (409 `session_not_running`), its VM gone (503).
SESSION_ERROR_RESPONSES = error_responses(400, 401, 403, 404, 409, 503)
# Routes that can start a VM (admission control, docs/operations.md "Limits and admission control").
START_ERROR_RESPONSES = error_responses(
    429,
    (503, "`capacity_exhausted`: the host has no room for another VM (session limit, memory or disk); "
          "nothing was started, retry after `Retry-After` seconds. Or the VM failed to start "
          "(`boot_timeout`, `vm_crashed`, …)", RETRY_AFTER),
)
# Routes that may pull an image (docs/images.md).
IMAGE_ERROR_RESPONSES = error_responses(
    (404, "Not found: `image_not_found` (the registry has no such image), or another `…_not_found`"),
    (413, "`payload_too_large`: the image is larger than `CHASER_IMAGE_MAX_BYTES`"),
    (502, "`image_pull_failed`: the registry is unreachable or refused (the message carries its reason)"),
    (500, "`image_conversion_failed`: unpacking or converting the image failed on this host (e.g. its disk is full)"),
)
