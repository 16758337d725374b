"""`/readyz`: readiness (no auth). `/health` and `/healthz` (chaser/api/app.py) only say the process answers;
this also asks the database (`SELECT 1`, off the loop) and whether the runtime has prepared the host."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

from chaser.api.errors import error_response
from chaser.api.routes import error_responses
from chaser.service.container import Services

READY_TIMEOUT_S = 5.0


def install_readiness(app: FastAPI, services: Services, *, runtime_prepared: Callable[[], bool]) -> None:
    def select_one() -> None:
        with services.db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    @app.get("/readyz", tags=["meta"], summary="Readiness probe (no auth): the database answers, the runtime is ready",
             response_model=dict[str, str],
             responses=error_responses((503, "`not_ready`: the database does not answer, or the runtime has not "
                                             "prepared the host yet (the message says which)")))
    async def readyz() -> JSONResponse:
        try:
            await asyncio.wait_for(asyncio.to_thread(select_one), READY_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any failure is "not ready", with its reason
            return error_response(503, "not_ready", f"the database does not answer: {type(exc).__name__}: {exc}"[:500])
        if not runtime_prepared():
            return error_response(503, "not_ready", "the runtime has not prepared the host yet")
        return JSONResponse({"status": "ready"})
