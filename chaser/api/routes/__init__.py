"""One router per resource."""

from chaser.models import ErrorPublic

ERROR_RESPONSES = {
    status: {"model": ErrorPublic, "description": description}
    for status, description in (
        (400, "Invalid request (`invalid_request` or a more specific code)"),
        (401, "Missing or invalid API key (`unauthorized`)"),
        (403, "The key lacks the scope, or the account is not its own (`forbidden`)"),
        (404, "Not found (`not_found`, `session_not_found`, …)"),
        (409, "Conflict (`conflict`, `session_not_running`, …)"),
    )
}
SESSION_ERROR_RESPONSES = {
    **ERROR_RESPONSES,
    503: {"model": ErrorPublic, "description": "The VM runtime could not serve the request (`vm_crashed`, `boot_timeout`, …)"},
}
