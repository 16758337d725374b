"""`POST /v1/exec` (auto-provisioned session) and `POST /v1/sessions/{id}/exec`."""

from __future__ import annotations

from fastapi import APIRouter

from chaser.api.deps import ExecWrite, ServicesDep
from chaser.api.routes import (
    AUTH_ERROR_RESPONSES,
    IMAGE_ERROR_RESPONSES,
    SESSION_ERROR_RESPONSES,
    START_ERROR_RESPONSES,
)
from chaser.models import ExecCreate, ExecPublic, SessionExecCreate

router = APIRouter(tags=["exec"], responses=AUTH_ERROR_RESPONSES)


@router.post("/v1/exec", response_model=ExecPublic,
             responses={**SESSION_ERROR_RESPONSES, **IMAGE_ERROR_RESPONSES, **START_ERROR_RESPONSES},
             summary="Run a command in a workspace's session (started if needed) or a throw-away one")
async def exec_auto(services: ServicesDep, principal: ExecWrite, body: ExecCreate) -> ExecPublic:
    return await services.commands.run(principal, body)


@router.post("/v1/sessions/{session_id}/exec", response_model=ExecPublic, responses=SESSION_ERROR_RESPONSES,
             summary="Run a command in a session")
async def exec_in_session(session_id: str, services: ServicesDep, principal: ExecWrite,
                          body: SessionExecCreate) -> ExecPublic:
    live = await services.sessions.live_session(principal, session_id)
    return await services.commands.exec(live, body)
