"""`/v1/sessions/{id}/commands…`: the session's commands, their output stream, stdin and signals."""

from __future__ import annotations

from fastapi import APIRouter, Body, Header, Query
from fastapi.responses import StreamingResponse

from chaser import errors
from chaser.api.deps import ExecWrite, ServicesDep, SessionsRead
from chaser.api.routes import SESSION_ERROR_RESPONSES, Responses
from chaser.models import CommandPublic, CommandsPublic, KillCreate, KillPublic, StdinCreate, StdinPublic
from chaser.service.commands import DEFAULT_STREAM_WAIT_MS, MAX_STREAM_WAIT_MS

router = APIRouter(prefix="/v1/sessions/{session_id}/commands", tags=["commands"], responses=SESSION_ERROR_RESPONSES)

SSE_DOC: Responses = {
    200: {
        "description": "Server-Sent Events: `output` events `{offset, data, encoding}` then one "
                       "`exit` event `{status, exit_code}` (or an `error` event `{code, message}`); see docs/api.md",
        # Before OpenAPI 3.2 (no `itemSchema`), an event stream's `schema` describes one event.
        "content": {"text/event-stream": {"schema": {
            "type": "object",
            "properties": {"event": {"type": "string", "enum": ["output", "exit", "error"]},
                           "data": {"type": "string", "description": "one JSON document"},
                           "id": {"type": "string", "description": "the output offset after this event"},
                           "retry": {"type": "integer"}},
            "required": ["data"],
        }}},
    }
}


@router.get("", response_model=CommandsPublic, summary="List the session's commands")
async def list_commands(session_id: str, services: ServicesDep, principal: SessionsRead) -> CommandsPublic:
    live = await services.sessions.live_session(principal, session_id)
    return CommandsPublic(commands=await services.commands.list(live))


@router.get("/{command_id}", response_model=CommandPublic, summary="Get a command with the tail of its output")
async def get_command(session_id: str, command_id: str, services: ServicesDep,
                      principal: SessionsRead) -> CommandPublic:
    live = await services.sessions.live_session(principal, session_id)
    return await services.commands.get(live, command_id)


@router.post("/{command_id}/stdin", response_model=StdinPublic, summary="Write to a running command's stdin")
async def send_stdin(session_id: str, command_id: str, services: ServicesDep, principal: ExecWrite,
                     body: StdinCreate) -> StdinPublic:
    live = await services.sessions.live_session(principal, session_id)
    return await services.commands.stdin(live, command_id, body)


@router.post("/{command_id}/kill", response_model=KillPublic, summary="Send a signal (default TERM) to a command")
async def kill_command(session_id: str, command_id: str, services: ServicesDep, principal: ExecWrite,
                       body: KillCreate | None = Body(default=None)) -> KillPublic:
    live = await services.sessions.live_session(principal, session_id)
    return await services.commands.kill(live, command_id, body or KillCreate())


@router.get("/{command_id}/stream", response_class=StreamingResponse, responses=SSE_DOC,
            summary="Stream a command's output as Server-Sent Events")
async def stream_command(
    session_id: str, command_id: str, services: ServicesDep, principal: SessionsRead,
    from_: int | None = Query(None, alias="from", ge=0, description="Byte offset to start at (default 0)"),
    interval_ms: int = Query(DEFAULT_STREAM_WAIT_MS, ge=0, le=600_000,
                             description="Longest wait for new output per poll of the agent"),
    max_bytes: int | None = Query(None, ge=1, description="Stop after this many output bytes (no exit event)"),
    last_event_id: str | None = Header(None, include_in_schema=False),
) -> StreamingResponse:
    offset = from_
    if offset is None and last_event_id:
        try:
            offset = max(0, int(last_event_id))
        except ValueError:
            raise errors.InvalidRequest("Last-Event-ID must be a byte offset") from None
    live = await services.sessions.live_session(principal, session_id)
    await services.commands.check_command(live, command_id)
    wait_ms = min(max(interval_ms, 50), MAX_STREAM_WAIT_MS)
    events = services.commands.stream(live, command_id, offset=offset or 0, wait_ms=wait_ms, max_bytes=max_bytes)
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
