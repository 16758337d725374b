"""`/v1/sessions/{id}/pty` (WebSocket), `/v1/sessions/{id}/resize`, `/v1/sessions/{id}/ptys`.

WebSocket endpoints authenticate like the rest of the API (`Authorization:
Bearer sk_…`), or with `?token=sk_…` for browsers, which cannot set headers on
a WebSocket. Every refusal happens *before* the upgrade is accepted, as a plain
HTTP response with the usual `{"code","message"}` JSON body (the ASGI
"WebSocket Denial Response" extension, which uvicorn implements); a server
without it gets a close with code 4000 + the HTTP status (e.g. 4404).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import APIRouter, Body, WebSocket
from pydantic import BaseModel, Field
from starlette.requests import HTTPConnection

from chaser import errors
from chaser.api.deps import ExecWrite, Services, ServicesDep, SessionsRead
from chaser.api.errors import error_response
from chaser.api.routes import SESSION_ERROR_RESPONSES
from chaser.service import pty as ptys
from chaser.service.forward import agent_websocket
from chaser.service.keys import Principal

log = logging.getLogger("chaser.api.pty")
router = APIRouter(prefix="/v1/sessions", tags=["pty"], responses=SESSION_ERROR_RESPONSES)
EXEC_FRAME_TIMEOUT_S = 60.0


# --- shared by the WebSocket endpoints (also used by routes/forward.py) -------------------
def services_of(connection: HTTPConnection) -> Services:
    return connection.app.state.services


def bearer_of(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise errors.Unauthorized("the Authorization header must be 'Bearer <API key>'")
    return credentials.strip()


def connection_principal(connection: HTTPConnection, scope: str, *, query_token: bool = True,
                         extra_key: str | None = None) -> Principal:
    """The caller of a WebSocket (or gateway) request: `Authorization` header,
    then `?token=` (when allowed), then `extra_key` (e.g. a cookie)."""
    services = services_of(connection)
    key = bearer_of(connection.headers.get("authorization"))
    if key is None and query_token:
        key = connection.query_params.get("token") or None
    if key is None:
        key = extra_key
    if key is None:
        raise errors.Unauthorized("missing API key: send 'Authorization: Bearer sk_…' (or ?token= for browsers)")
    principal = services.keys.authenticate(key)
    account = connection.headers.get("x-chaser-account")
    if account is not None and account.strip() and account.strip() != principal.account_id:
        raise errors.Forbidden(f"this API key has no access to account {account.strip()!r}")
    principal.require(scope)
    return principal


async def deny(websocket: WebSocket, exc: errors.ChaserError) -> None:
    """Refuse an upgrade that was not accepted yet: an HTTP error response, or a 4xxx close."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        await websocket.send_denial_response(error_response(exc.status, exc.code, exc.message, headers))
    else:
        await websocket.close(code=4000 + exc.status, reason=f"{exc.code}: {exc.message}"[:120])


def as_chaser_error(exc: Exception) -> errors.ChaserError:
    if isinstance(exc, errors.ChaserError):
        return exc
    log.exception("unexpected error before a WebSocket upgrade")
    return errors.ChaserError(f"internal error: {type(exc).__name__}")


async def send_error_and_close(websocket: WebSocket, exc: errors.ChaserError, code: int = 1011) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_text(json.dumps({"type": "error", "code": exc.code, "message": exc.message}))
    with contextlib.suppress(Exception):
        await websocket.close(code=code, reason=exc.code[:120])


# --- PTY --------------------------------------------------------------------------------
@router.websocket("/{session_id}/pty")
async def pty_socket(websocket: WebSocket, session_id: str) -> None:
    """Interactive terminal. Query: `mode=human|agent|exec`, `rows`, `cols`, `token`."""
    services = services_of(websocket)
    query = websocket.query_params
    try:
        principal = connection_principal(websocket, "exec.write")
        mode = ptys.check_mode(query.get("mode"))
        rows, cols = ptys.check_size(query.get("rows", ptys.DEFAULT_ROWS), query.get("cols", ptys.DEFAULT_COLS))
        live = await services.sessions.live_session(principal, session_id)
    except Exception as exc:  # noqa: BLE001 - every refusal is an HTTP answer
        await deny(websocket, as_chaser_error(exc))
        return

    async with services.sessions.using(live) as vm:
        if mode == "exec":
            await websocket.accept()
            try:
                first = await asyncio.wait_for(websocket.receive(), EXEC_FRAME_TIMEOUT_S)
            except asyncio.TimeoutError:
                await send_error_and_close(websocket, errors.InvalidRequest("no exec frame received"), 1008)
                return
            if first["type"] == "websocket.disconnect":
                return
            control = ptys.parse_control(first["text"]) if first.get("text") is not None else None
            command = control.get("command") if control and control.get("type") == "exec" else None
            if not isinstance(command, str) or not command:
                await send_error_and_close(websocket, errors.InvalidRequest(
                    'exec mode: the first frame must be {"type":"exec","command":"…"}'), 1008)
                return
            env = control.get("env") if isinstance(control.get("env"), dict) else None
            cwd = control.get("cwd") if isinstance(control.get("cwd"), str) else None
            try:
                plan = ptys.plan(mode, rows, cols, command=command, cwd=cwd, env=env)
                async with agent_websocket(vm, "/pty", plan.params) as agent_ws:
                    await ptys.bridge(websocket, agent_ws, output_filter=ptys.MarkerFilter(plan.marker))
            except errors.ChaserError as exc:
                await send_error_and_close(websocket, exc, 1008 if exc.status < 500 else 1011)
            return

        plan = ptys.plan(mode, rows, cols)
        try:
            agent_cm = agent_websocket(vm, "/pty", plan.params)
            agent_ws = await agent_cm.__aenter__()
        except Exception as exc:  # noqa: BLE001
            await deny(websocket, as_chaser_error(exc))
            return
        try:
            await websocket.accept()
            await ptys.bridge(websocket, agent_ws)
        finally:
            with contextlib.suppress(Exception):
                await agent_cm.__aexit__(None, None, None)


# --- resize / list ----------------------------------------------------------------------
class ResizeBody(BaseModel):
    # The bounds are also what ptys.check_size enforces (with its own message).
    rows: int = Field(ge=1, le=ptys.MAX_SIZE)
    cols: int = Field(ge=1, le=ptys.MAX_SIZE)


@router.post("/{session_id}/resize", summary="Resize the session's open terminals (rows/cols 1..1000)")
async def resize(session_id: str, services: ServicesDep, principal: ExecWrite,
                 body: ResizeBody = Body(...)) -> dict:
    rows, cols = ptys.check_size(body.rows, body.cols)
    live = await services.sessions.live_session(principal, session_id)
    async with services.sessions.using(live) as vm:
        result = await vm.call("resize_ptys", rows, cols)
    return {"session_id": session_id, "rows": rows, "cols": cols, "resized": result.get("resized", [])}


@router.get("/{session_id}/ptys", summary="The session's open terminals")
async def list_ptys(session_id: str, services: ServicesDep, principal: SessionsRead) -> dict:
    live = await services.sessions.live_session(principal, session_id)
    async with services.sessions.using(live) as vm:
        result = await vm.call("request", "GET", "/ptys")
    return {"ptys": result.get("ptys", [])}
