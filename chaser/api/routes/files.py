"""`POST /v1/sessions/{id}/upload` and `GET /v1/sessions/{id}/download`."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from chaser.api.deps import FilesRead, FilesWrite, ServicesDep
from chaser.api.routes import SESSION_ERROR_RESPONSES
from chaser.models import ErrorPublic, UploadPublic

router = APIRouter(prefix="/v1/sessions/{session_id}", tags=["files"], responses={
    **SESSION_ERROR_RESPONSES, 413: {"model": ErrorPublic, "description": "Over the per-operation limit (16 MB)"}})

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["path", "file"],
            "properties": {"path": {"type": "string", "description": "Destination; relative to /workspace"},
                           "file": {"type": "string", "format": "binary"}},
        }}},
    }
}


@router.post("/upload", response_model=UploadPublic, openapi_extra=UPLOAD_BODY,
             summary="Upload a file (multipart `path` + `file`; parents created)")
async def upload(session_id: str, request: Request, services: ServicesDep, principal: FilesWrite) -> UploadPublic:
    boundary = services.files.check_upload_headers(request.headers.get("content-type"),
                                                   request.headers.get("content-length"))
    live = await services.sessions.live_session(principal, session_id)
    return await services.files.upload(live, boundary=boundary, body=request.stream())


@router.get("/download", response_class=StreamingResponse, summary="Download a file",
            responses={200: {"description": "The file's bytes", "content": {"application/octet-stream": {}}}})
async def download(session_id: str, services: ServicesDep, principal: FilesRead,
                   path: str = Query(..., min_length=1, max_length=4096)) -> StreamingResponse:
    live = await services.sessions.live_session(principal, session_id)
    stream = await services.files.open_download(live, path)
    name = path.rstrip("/").rsplit("/", 1)[-1] or "download"
    safe_name = "".join(ch for ch in name if ch.isprintable() and ch not in '"\\;')[:200] or "download"
    return StreamingResponse(stream, media_type="application/octet-stream",
                             headers={"Content-Disposition": f'attachment; filename="{safe_name}"'})
