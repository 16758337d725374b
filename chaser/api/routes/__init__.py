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
# Routes that can start a VM (admission control, docs/operations.md "Limits and admission control").
START_ERROR_RESPONSES = {
    429: {"model": ErrorPublic, "description": "The account is at its limit of concurrent sessions "
                                                "(`quota_exceeded`, `CHASER_MAX_SESSIONS_PER_ACCOUNT`); nothing was started"},
    503: {"model": ErrorPublic,
          "description": "`capacity_exhausted`: the host has no room for another VM (session limit, memory or disk); "
                         "nothing was started, retry after `Retry-After` seconds. Or the VM failed to start "
                         "(`boot_timeout`, `vm_crashed`, …)",
          "headers": {"Retry-After": {"description": "Seconds to wait before retrying (with `capacity_exhausted`)",
                                      "schema": {"type": "integer"}}}},
}
