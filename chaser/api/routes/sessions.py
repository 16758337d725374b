"""`/v1/sessions`: create, list, get, terminate, bulk-terminate, self-test, egress policy, pause/resume/fork."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Body, Query, Request, Response

from chaser.api.deps import ServicesDep, SessionsRead, SessionsWrite
from chaser.api.routes import (
    AUTH_ERROR_RESPONSES,
    IMAGE_ERROR_RESPONSES,
    SESSION_ERROR_RESPONSES,
    START_ERROR_RESPONSES,
    error_responses,
)
from chaser.api.urls import public_base, session_url
from chaser.models import (
    BulkTerminateCreate,
    BulkTerminateFailure,
    BulkTerminatePublic,
    Endpoints,
    ForkCreate,
    ForkPublic,
    NetworkPolicyCreate,
    NetworkPolicyPublic,
    SelfTestPublic,
    SessionCreate,
    SessionPublic,
    SessionsPublic,
)
from chaser.service.network import policy_public
from chaser.service.records import SessionRecord

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], responses=AUTH_ERROR_RESPONSES)


def session_public(row: SessionRecord, base: str) -> SessionPublic:
    return SessionPublic(
        id=row.id, created_at=row.created_at, status=row.status,
        endpoints=Endpoints(control=f"{base}/v1/sessions/{row.id}"), workspace_id=row.workspace_id,
        persistence=row.workspace_id is not None, ephemeral=row.ephemeral, image=row.image,
        expires_at=row.expires_at, ended_at=row.ended_at, end_reason=row.end_reason, node_id=row.node_id,
    )


@router.post("", response_model=SessionPublic, status_code=201,
             summary="Create a session (answers once the VM is ready), or get the workspace's running one",
             responses={201: {"description": "A session was started", "headers": {"Location": {
                 "description": "The session's URL (`endpoints.control`)", "schema": {"type": "string"}}}},
                        200: {"model": SessionPublic, "description": "The workspace already had a session: "
                              "that one (its `network` applied to it; nothing else started)"},
                        **error_responses(400, 404, 409), **IMAGE_ERROR_RESPONSES, **START_ERROR_RESPONSES})
async def create_session(request: Request, response: Response, services: ServicesDep, principal: SessionsWrite,
                         body: SessionCreate | None = Body(default=None)) -> SessionPublic:
    row, started = await services.sessions.create(principal, body or SessionCreate())
    if started:
        response.headers["Location"] = session_url(request, row.id)
    else:
        response.status_code = 200
    return session_public(row, public_base(request))


@router.get("", response_model=SessionsPublic, summary="List sessions (active ones unless status is given)")
async def list_sessions(
    request: Request, services: ServicesDep, principal: SessionsRead,
    status: Literal["active", "all", "starting", "running", "paused", "terminated", "failed"] = Query("active"),
) -> SessionsPublic:
    rows = await asyncio.to_thread(services.sessions.list, principal, status=status)
    url = public_base(request)
    return SessionsPublic(sessions=[session_public(row, url) for row in rows], total=len(rows))


@router.post("/bulk-terminate", response_model=BulkTerminatePublic, summary="Terminate many sessions")
async def bulk_terminate(services: ServicesDep, principal: SessionsWrite,
                         body: BulkTerminateCreate) -> BulkTerminatePublic:
    terminated, failed = await services.sessions.bulk_terminate(principal, body)
    return BulkTerminatePublic(terminated=terminated, failed=[
        BulkTerminateFailure(id=item_id, code=code, message=message) for item_id, code, message in failed])


@router.get("/{session_id}", response_model=SessionPublic, summary="Get a session", responses=error_responses(404))
async def get_session(session_id: str, request: Request, services: ServicesDep,
                      principal: SessionsRead) -> SessionPublic:
    row = await asyncio.to_thread(services.sessions.get, principal, session_id)
    if row.status == "running":
        await services.sessions.check_crashed(session_id)
        row = await asyncio.to_thread(services.sessions.get, principal, session_id)
    return session_public(row, public_base(request))


@router.delete("/{session_id}", response_model=SessionPublic, responses=error_responses(404),
               summary="Terminate a session (idempotent; force=true kills the VM at once)")
async def terminate_session(session_id: str, request: Request, services: ServicesDep, principal: SessionsWrite,
                            force: bool = Query(False)) -> SessionPublic:
    row = await services.sessions.terminate(principal, session_id, force=force)
    return session_public(row, public_base(request))


@router.post("/{session_id}/self-test", response_model=SelfTestPublic, responses=SESSION_ERROR_RESPONSES,
             summary="What a process sees inside the sandbox")
async def self_test(session_id: str, services: ServicesDep, principal: SessionsRead) -> SelfTestPublic:
    live = await services.sessions.live_session(principal, session_id)
    return await services.commands.self_test(live)


@router.get("/{session_id}/network", response_model=NetworkPolicyPublic, responses=error_responses(404),
            summary="The session's egress policy (an ended session: its last one)")
async def get_network(session_id: str, services: ServicesDep, principal: SessionsRead) -> NetworkPolicyPublic:
    policy = services.sessions.network.get(principal, session_id)
    return policy_public(policy, enforced=services.sessions.network.enforced())


@router.put("/{session_id}/network", response_model=NetworkPolicyPublic, responses=SESSION_ERROR_RESPONSES,
            summary="Replace a running session's egress policy (applies to new connections at once)")
async def set_network(session_id: str, body: NetworkPolicyCreate, services: ServicesDep,
                      principal: SessionsWrite) -> NetworkPolicyPublic:
    policy = await services.sessions.network.set(principal, session_id, body)
    return policy_public(policy, enforced=services.sessions.network.enforced())


@router.post("/{session_id}/pause", response_model=SessionPublic,
             responses=error_responses(404, (409, "`session_not_running`: only a running session can be paused"),
                                       503, 507),
             summary="Pause: save the VM's memory and disk, end its QEMU (status `paused`; any request wakes it)")
async def pause_session(session_id: str, request: Request, services: ServicesDep,
                        principal: SessionsWrite) -> SessionPublic:
    row = await services.sessions.pause(principal, session_id)
    return session_public(row, public_base(request))


@router.post("/{session_id}/resume", response_model=SessionPublic,
             responses={**error_responses(404, (409, "`session_not_running` (ended), or `snapshot_incompatible`: "
                                                     "the state was saved by other guest assets or QEMU")),
                        **START_ERROR_RESPONSES},
             summary="Resume a paused session with its processes (a running one is answered as it is)")
async def resume_session(session_id: str, request: Request, services: ServicesDep,
                         principal: SessionsWrite) -> SessionPublic:
    row = await services.sessions.resume(principal, session_id)
    return session_public(row, public_base(request))


@router.post("/{session_id}/fork", response_model=ForkPublic, status_code=201,
             responses={**error_responses(400, 404, 409, 507), **START_ERROR_RESPONSES},
             summary="Fork a running session into `count` copies of its memory and disk (the source goes on)")
async def fork_session(session_id: str, request: Request, services: ServicesDep, principal: SessionsWrite,
                       body: ForkCreate | None = Body(default=None)) -> ForkPublic:
    fork = body or ForkCreate()
    rows = await services.sessions.fork(principal, session_id, count=fork.count,
                                        workspace_names=fork.workspace_names)
    base = public_base(request)
    return ForkPublic(source_id=session_id, sessions=[session_public(row, base) for row in rows])
