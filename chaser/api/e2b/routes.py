"""The E2B control plane (`/e2b/…`): sandboxes as the `e2b` SDK asks for them, over the
session service (chaser/service/e2b.py, chaser/service/sessions.py)."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl, unquote

from fastapi import APIRouter, Body, Depends, Request, Response
from fastapi.responses import JSONResponse

from chaser import errors
from chaser.api.auth import bearer_key
from chaser.api.ratelimit import charge
from chaser.service.audit import note_principal
from chaser.service.e2b import E2BSandbox, E2BSandboxes, network_of
from chaser.service.keys import Principal
from chaser.service.records import SessionRecord

ENVD_VERSION = "0.5.7"  # what chaser/agent/envd implements (ENVD_VERSION there)
CLIENT_ID = "chaser"
MAX_LIMIT = 1000

router = APIRouter()


def sandboxes_of(request: Request) -> E2BSandboxes:
    sandboxes: E2BSandboxes = request.app.state.e2b
    return sandboxes


async def caller(request: Request) -> Principal:
    """`X-API-KEY: <Chaser API key>` (the SDK's header), else `Authorization: Bearer`."""
    services = request.app.state.services
    key = request.headers.get("x-api-key") or bearer_key(request.headers.get("authorization"))
    if not key:
        raise errors.Unauthorized("missing API key: send 'X-API-KEY: <Chaser API key>' (E2B_API_KEY)")
    principal: Principal = services.keys.authenticate(key)
    note_principal(principal)
    await charge(request, principal)
    return principal


def writer(principal: Annotated[Principal, Depends(caller)]) -> Principal:
    principal.require("sessions.write")
    principal.require("exec.write")  # the sandbox's envd runs commands
    return principal


def reader(principal: Annotated[Principal, Depends(caller)]) -> Principal:
    principal.require("sessions.read")
    return principal


Reader = Annotated[Principal, Depends(reader)]
Writer = Annotated[Principal, Depends(writer)]
Sandboxes = Annotated[E2BSandboxes, Depends(sandboxes_of)]
JsonBody = Annotated[dict[str, Any] | None, Body()]


def _iso(value: datetime | None) -> str:
    value = value or datetime.now(UTC)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat().replace("+00:00", "Z")


def _state(row: SessionRecord) -> str:
    return "paused" if row.status == "paused" else "running"


def sandbox_json(request: Request, sandbox: E2BSandbox, row: SessionRecord) -> dict[str, Any]:
    """E2B's `Sandbox` (create, connect) answer."""
    return {"templateID": sandbox.template_id, "sandboxID": sandbox.session_id, "clientID": CLIENT_ID,
            "envdVersion": ENVD_VERSION, "envdAccessToken": sandbox.access_token,
            "domain": request.app.state.services.settings.base_domain, "alias": sandbox.template_id}


def detail_json(request: Request, sandbox: E2BSandbox, row: SessionRecord, *, token: bool) -> dict[str, Any]:
    """E2B's `SandboxDetail` / `ListedSandbox`."""
    settings = request.app.state.services.settings
    detail: dict[str, Any] = {
        "templateID": sandbox.template_id, "sandboxID": sandbox.session_id, "clientID": CLIENT_ID,
        "alias": sandbox.template_id, "startedAt": _iso(sandbox.started_at), "endAt": _iso(row.expires_at),
        "envdVersion": ENVD_VERSION, "cpuCount": settings.vcpus, "memoryMB": settings.memory_mib,
        "diskSizeMB": settings.writable_size_bytes // (1024 * 1024), "state": _state(row),
        "metadata": sandbox.metadata,
    }
    if token:
        detail["envdAccessToken"] = sandbox.access_token
        detail["domain"] = settings.base_domain
    return detail


def _strings(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise errors.InvalidRequest(f"{what} must be an object of strings")
    return dict(value)


def _timeout(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.InvalidRequest("timeout must be an integer (seconds)")
    return value


async def _create(request: Request, principal: Principal, sandboxes: E2BSandboxes,
                  body: dict[str, Any] | None) -> JSONResponse:
    body = body or {}
    template = body.get("templateID")
    if not isinstance(template, str) or not template:
        raise errors.InvalidRequest("templateID is required")
    allow = body.get("allow_internet_access")
    if allow is not None and not isinstance(allow, bool):
        raise errors.InvalidRequest("allow_internet_access must be a boolean")
    network = body.get("network")
    if network is not None and not isinstance(network, dict):
        raise errors.InvalidRequest("network must be an object")
    sandbox, row = await sandboxes.create(
        principal, template_id=template, timeout_s=_timeout(body.get("timeout")),
        metadata=_strings(body.get("metadata"), "metadata"), env=_strings(body.get("envVars"), "envVars"),
        network=network_of(allow, network))
    return JSONResponse(sandbox_json(request, sandbox, row), status_code=201)


@router.post("/v2/sandboxes", summary="Create a sandbox (E2B)")
async def create_v2(request: Request, principal: Writer, sandboxes: Sandboxes, body: JsonBody = None) -> JSONResponse:
    return await _create(request, principal, sandboxes, body)


@router.post("/sandboxes", summary="Create a sandbox (E2B, older SDKs)")
async def create_v1(request: Request, principal: Writer, sandboxes: Sandboxes, body: JsonBody = None) -> JSONResponse:
    return await _create(request, principal, sandboxes, body)


def _metadata_filter(raw: str | None) -> dict[str, str]:
    """The SDK's `metadata` query value: `k=v&k2=v2`, each part percent-encoded once more."""
    if not raw:
        return {}
    return {unquote(k): unquote(v) for k, v in parse_qsl(raw, keep_blank_values=True)}


def _listed(request: Request, sandboxes: E2BSandboxes, principal: Principal, *, metadata: str | None,
            state: str | None) -> list[tuple[E2BSandbox, SessionRecord]]:
    wanted = _metadata_filter(metadata)
    states = {s.strip() for s in (state or "").split(",") if s.strip()}
    found = []
    for sandbox, row in sorted(sandboxes.list(principal), key=lambda item: (item[0].started_at, item[0].session_id)):
        if any(sandbox.metadata.get(k) != v for k, v in wanted.items()):
            continue
        if states and _state(row) not in states:
            continue
        found.append((sandbox, row))
    return found


@router.get("/v2/sandboxes", summary="List sandboxes (E2B): metadata, state, limit, nextToken")
async def list_v2(request: Request, response: Response, principal: Reader, sandboxes: Sandboxes,
                  metadata: str | None = None, state: str | None = None, limit: int = 100,
                  nextToken: str | None = None) -> list[dict[str, Any]]:
    if not 1 <= limit <= MAX_LIMIT:
        raise errors.InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}")
    found = _listed(request, sandboxes, principal, metadata=metadata, state=state)
    if nextToken:
        try:
            after = base64.urlsafe_b64decode(nextToken.encode()).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise errors.InvalidRequest("nextToken is not one this server gave") from None
        ids = [sandbox.session_id for sandbox, _row in found]
        found = found[ids.index(after) + 1:] if after in ids else [
            item for item in found if item[0].session_id > after]
    page = found[:limit]
    if len(found) > limit:
        response.headers["x-next-token"] = base64.urlsafe_b64encode(page[-1][0].session_id.encode()).decode()
    return [detail_json(request, sandbox, row, token=False) for sandbox, row in page]


@router.get("/sandboxes", summary="List running sandboxes (E2B, older SDKs)")
async def list_v1(request: Request, principal: Reader, sandboxes: Sandboxes,
                  metadata: str | None = None) -> list[dict[str, Any]]:
    found = _listed(request, sandboxes, principal, metadata=metadata, state="running")
    return [detail_json(request, sandbox, row, token=False) for sandbox, row in found]


@router.get("/sandboxes/{sandbox_id}", summary="A sandbox (E2B SandboxDetail)")
async def get_sandbox(sandbox_id: str, request: Request, principal: Reader, sandboxes: Sandboxes) -> dict[str, Any]:
    sandbox, row = sandboxes.get(principal, sandbox_id)
    return detail_json(request, sandbox, row, token=True)


@router.delete("/sandboxes/{sandbox_id}", status_code=204, summary="Kill a sandbox (E2B)")
async def kill(sandbox_id: str, principal: Writer, sandboxes: Sandboxes) -> Response:
    await sandboxes.kill(principal, sandbox_id)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/timeout", status_code=204, summary="Set a sandbox's timeout (E2B)")
async def set_timeout(sandbox_id: str, principal: Writer, sandboxes: Sandboxes, body: JsonBody = None) -> Response:
    timeout = _timeout((body or {}).get("timeout"))
    if timeout is None:
        raise errors.InvalidRequest("timeout is required")
    sandboxes.set_timeout(principal, sandbox_id, timeout)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/pause", status_code=204, summary="Pause a sandbox (E2B)")
async def pause(sandbox_id: str, principal: Writer, sandboxes: Sandboxes) -> Response:
    await sandboxes.pause(principal, sandbox_id)
    return Response(status_code=204)


async def _connect(request: Request, sandbox_id: str, principal: Principal, sandboxes: E2BSandboxes,
                   body: dict[str, Any] | None, *, created_status: int) -> JSONResponse:
    _sandbox, before = sandboxes.get(principal, sandbox_id)
    sandbox, row = await sandboxes.connect(principal, sandbox_id, _timeout((body or {}).get("timeout")))
    status = created_status if before.status == "paused" else 200
    return JSONResponse(sandbox_json(request, sandbox, row), status_code=status)


@router.post("/v2/sandboxes/{sandbox_id}/connect", summary="Connect to a sandbox, resuming it if paused (E2B)")
async def connect_v2(sandbox_id: str, request: Request, principal: Writer, sandboxes: Sandboxes,
                     body: JsonBody = None) -> JSONResponse:
    return await _connect(request, sandbox_id, principal, sandboxes, body, created_status=201)


@router.post("/sandboxes/{sandbox_id}/connect", summary="Connect to a sandbox (E2B, older SDKs)")
async def connect_v1(sandbox_id: str, request: Request, principal: Writer, sandboxes: Sandboxes,
                     body: JsonBody = None) -> JSONResponse:
    return await _connect(request, sandbox_id, principal, sandboxes, body, created_status=201)


@router.post("/sandboxes/{sandbox_id}/resume", status_code=201, summary="Resume a paused sandbox (E2B, legacy)")
async def resume(sandbox_id: str, request: Request, principal: Writer, sandboxes: Sandboxes,
                 body: JsonBody = None) -> JSONResponse:
    _sandbox, before = sandboxes.get(principal, sandbox_id)
    if before.status != "paused":
        raise errors.Conflict(f"sandbox {sandbox_id} is not paused")
    sandbox, row = await sandboxes.connect(principal, sandbox_id, _timeout((body or {}).get("timeout")))
    return JSONResponse(sandbox_json(request, sandbox, row), status_code=201)


@router.get("/sandboxes/{sandbox_id}/metrics", summary="A sandbox's resource use (E2B SandboxMetric list)")
async def metrics(sandbox_id: str, principal: Reader, sandboxes: Sandboxes) -> list[dict[str, Any]]:
    sample = await sandboxes.metrics(principal, sandbox_id)
    now = datetime.now(UTC)
    return [{"timestamp": _iso(now), "timestampUnix": int(now.timestamp()), **sample}]
