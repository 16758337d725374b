"""`/v1/sessions/{id}/pty` (WebSocket), `/v1/sessions/{id}/resize`, `/v1/sessions/{id}/ptys`.

WebSocket endpoints authenticate like the rest of the API (`Authorization:
Bearer sk_…`), or with `?token=sk_…` for browsers, which cannot set headers on
a WebSocket; never from a page a sandbox served (`Origin: null` or a session's
host-style origin: 403). Every refusal happens *before* the upgrade is accepted
(`chaser/api/client_socket.py`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request, WebSocket
from pydantic import BaseModel, Field
from starlette.requests import HTTPConnection

from chaser.api.auth import principal_from, refuse_sandbox_origin
from chaser.api.client_socket import StarletteClientSocket
from chaser.api.deps import ExecWrite, ServicesDep, SessionsRead, services_of
from chaser.api.ratelimit import charge
from chaser.api.routes import SESSION_ERROR_RESPONSES
from chaser.service import pty as ptys

router = APIRouter(prefix="/v1/sessions", tags=["pty"], responses=SESSION_ERROR_RESPONSES)


def terminals_of(connection: HTTPConnection) -> ptys.Terminals:
    return services_of(connection).terminals


# --- PTY --------------------------------------------------------------------------------
@router.websocket("/{session_id}/pty")
async def pty_socket(websocket: WebSocket, session_id: str) -> None:
    """Interactive terminal. Query: `mode=human|agent|exec`, `rows`, `cols`, `token`."""
    client = StarletteClientSocket(websocket)
    services = services_of(websocket)
    query = websocket.query_params
    try:
        refuse_sandbox_origin(websocket.headers, services.settings.base_domain)
        principal = principal_from(services.keys, websocket.headers, query=query, scope="exec.write")
        await charge(websocket, principal)  # once, at open
        mode = ptys.check_mode(query.get("mode"))
        rows, cols = ptys.check_size(query.get("rows", ptys.DEFAULT_ROWS), query.get("cols", ptys.DEFAULT_COLS))
        live = await services.sessions.live_session(principal, session_id)
    except Exception as exc:  # noqa: BLE001 - every refusal is an HTTP answer
        await client.deny(exc)
        return
    await terminals_of(websocket).serve(live, mode, rows, cols, client)


# --- resize / list ----------------------------------------------------------------------
class ResizeBody(BaseModel):
    # The bounds are also what ptys.check_size enforces (with its own message).
    rows: int = Field(ge=1, le=ptys.MAX_SIZE)
    cols: int = Field(ge=1, le=ptys.MAX_SIZE)


@router.post("/{session_id}/resize", summary="Resize the session's open terminals (rows/cols 1..1000)")
async def resize(session_id: str, request: Request, services: ServicesDep, principal: ExecWrite,
                 body: ResizeBody = Body(...)) -> dict[str, Any]:
    rows, cols = ptys.check_size(body.rows, body.cols)
    live = await services.sessions.live_session(principal, session_id)
    resized = await terminals_of(request).resize(live, rows, cols)
    return {"session_id": session_id, "rows": rows, "cols": cols, "resized": resized}


@router.get("/{session_id}/ptys", summary="The session's open terminals")
async def list_ptys(session_id: str, request: Request, services: ServicesDep,
                    principal: SessionsRead) -> dict[str, Any]:
    live = await services.sessions.live_session(principal, session_id)
    return {"ptys": await terminals_of(request).open_ptys(live)}
