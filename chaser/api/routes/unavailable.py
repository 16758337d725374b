"""What chaser-sdk can call and a self-hosted server does not serve: `501 not_implemented`.

The hosted service has accounts, billing, webhooks, jobs, GitHub
integration, SSH keys, browser sessions (CDP) and GitHub imports; here each of
those paths (with the methods the SDK uses) answers
`501 {"code": "not_implemented", "message": "<area> is not available on a self-hosted Chaser server"}`
instead of a 404 or 405 that looks like a bug. A valid API key is still required
(401 first), like every other `/v1` call. Listed in docs/api.md.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from fastapi import APIRouter

from chaser import errors
from chaser.api.deps import CurrentKey
from chaser.models import ErrorPublic

# (area named in the message, OpenAPI tag, [(method, path), ...]): the calls of chaser-sdk 0.2.1.
UNAVAILABLE: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("accounts", "accounts", [
        ("GET", "/v1/accounts"), ("GET", "/v1/accounts/current"), ("POST", "/v1/accounts/organizations"),
        ("GET", "/v1/accounts/current/members"), ("POST", "/v1/accounts/current/members"),
        ("PATCH", "/v1/accounts/current/members/{user_id}"), ("DELETE", "/v1/accounts/current/members/{user_id}"),
        ("GET", "/v1/accounts/current/service-accounts"), ("POST", "/v1/accounts/current/service-accounts"),
        ("DELETE", "/v1/accounts/current/service-accounts/{service_account_id}"),
        ("GET", "/v1/accounts/current/service-accounts/{service_account_id}/keys"),
        ("POST", "/v1/accounts/current/service-accounts/{service_account_id}/keys"),
        ("DELETE", "/v1/accounts/current/service-accounts/{service_account_id}/keys/{key_id}"),
    ]),
    ("ssh keys", "ssh-keys", [
        ("GET", "/v1/ssh-keys"), ("POST", "/v1/ssh-keys"), ("DELETE", "/v1/ssh-keys/{key_id}"),
    ]),
    ("billing", "billing", [
        ("GET", "/v1/billing/summary"), ("POST", "/v1/billing/account"), ("POST", "/v1/billing/checkout"),
    ]),
    ("webhooks", "webhooks", [
        ("GET", "/v1/webhooks"), ("POST", "/v1/webhooks"), ("GET", "/v1/webhooks/deliveries"),
        ("GET", "/v1/webhooks/deliveries/{delivery_id}"), ("POST", "/v1/webhooks/deliveries/{delivery_id}/replay"),
        ("POST", "/v1/webhooks/deliveries/{delivery_id}/discard"), ("DELETE", "/v1/webhooks/{webhook_id}"),
    ]),
    ("jobs", "jobs", [
        ("GET", "/v1/jobs/kinds"), ("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/{job_id}"),
        ("POST", "/v1/jobs/{job_id}/cancel"), ("POST", "/v1/jobs/{job_id}/retry"),
    ]),
    ("github", "github", [("GET", "/v1/github/repositories")]),
    ("workspace import from GitHub", "workspaces", [("POST", "/v1/workspaces/import")]),
    ("browser CDP", "browser", [
        ("GET", "/v1/sessions/{session_id}/json/version"), ("GET", "/v1/sessions/{session_id}/json/list"),
    ]),
]

router = APIRouter()


def not_available_message(area: str) -> str:
    return f"{area} is not available on a self-hosted Chaser server"


def _endpoint(area: str) -> Callable[..., Awaitable[None]]:
    message = not_available_message(area)

    async def not_available(_principal: CurrentKey) -> None:
        raise errors.FeatureNotImplemented(message)

    return not_available


for _area, _tag, _calls in UNAVAILABLE:
    for _method, _path in _calls:
        router.add_api_route(
            _path, _endpoint(_area), methods=[_method], tags=[_tag], status_code=501,
            summary=f"Not available on a self-hosted server ({_area})",
            name=f"not_available_{_tag.replace('-', '_')}",
            response_model=None,
            openapi_extra={"parameters": [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                                          for name in re.findall(r"{(\w+)}", _path)]} if "{" in _path else None,
            responses={501: {"model": ErrorPublic, "description": f"`not_implemented`: {not_available_message(_area)}"},
                       401: {"model": ErrorPublic, "description": "Missing or invalid API key (`unauthorized`)"}},
        )
