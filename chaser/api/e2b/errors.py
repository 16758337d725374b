"""Errors as the E2B SDK parses them: `{"code": <HTTP status>, "message"}` (its `Error` model),
for the `/e2b` control plane only; `Retry-After` on 429 and 503."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from chaser import errors
from chaser.api.errors import describe_validation_error

log = logging.getLogger("chaser.api.e2b")
RETRY_AFTER_S = "10"


def e2b_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if status in (429, 503):
        headers.setdefault("Retry-After", RETRY_AFTER_S)
    return JSONResponse({"code": status, "message": message}, status_code=status, headers=headers or None)


async def _chaser_error(_request: Request, exc: errors.ChaserError) -> JSONResponse:
    if exc.status >= 500 and not isinstance(exc, errors.FeatureNotImplemented):
        log.warning("%s: %s", exc.code, exc.message)
    return e2b_error(exc.status, exc.message, exc.headers)


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return e2b_error(400, describe_validation_error(exc))


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return e2b_error(exc.status_code, "no such endpoint" if message == "Not Found" else message,
                     getattr(exc, "headers", None))


def install_e2b_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(errors.ChaserError, _chaser_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
