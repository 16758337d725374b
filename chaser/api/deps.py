"""Dependencies: the service container, the caller's key, scope checks."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from chaser import errors
from chaser.api.auth import principal_from
from chaser.api.ratelimit import charge
from chaser.service.audit import note_principal
from chaser.service.container import Services
from chaser.service.keys import Principal


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def services_of(connection: HTTPConnection) -> Services:
    """The services, from a WebSocket (where `ServicesDep` does not apply) or a request."""
    services: Services = connection.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer sk_…`")


async def current_principal(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    del credentials  # declared for the OpenAPI security scheme; principal_from reads the header itself
    principal = await asyncio.to_thread(principal_from, services.keys, request.headers)  # a database read
    note_principal(principal)  # the audit log's "who" of this request
    await charge(request, principal)  # its rate limit (429 rate_limited)
    return principal


def require(scope: str) -> Any:  # a `Depends(...)` marker, for `Annotated`
    async def check(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        principal.require(scope)
        return principal

    check.__name__ = f"require_{scope.replace('.', '_')}"
    return Depends(check)


async def require_admin(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    """A full-access key (what `chaser server` makes first): the operator's routes, e.g. /v1/nodes."""
    if not principal.full_access:
        raise errors.Forbidden("this route needs an admin API key (full access)")
    return principal


CurrentKey = Annotated[Principal, Depends(current_principal)]
AdminKey = Annotated[Principal, Depends(require_admin)]
SessionsRead = Annotated[Principal, require("sessions.read")]
SessionsWrite = Annotated[Principal, require("sessions.write")]
ExecWrite = Annotated[Principal, require("exec.write")]
FilesRead = Annotated[Principal, require("files.read")]
FilesWrite = Annotated[Principal, require("files.write")]
WorkspacesRead = Annotated[Principal, require("workspaces.read")]
WorkspacesWrite = Annotated[Principal, require("workspaces.write")]
KeysRead = Annotated[Principal, require("keys.read")]
KeysWrite = Annotated[Principal, require("keys.write")]
AuditRead = Annotated[Principal, require("audit.read")]
