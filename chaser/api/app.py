"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from chaser import __version__
from chaser.api.audit_origin import AuditOriginMiddleware
from chaser.api.body import DrainBodyMiddleware
from chaser.api.errors import RequestIdMiddleware, install_error_handlers
from chaser.api.ratelimit import RateLimitHeadersMiddleware
from chaser.config import Settings
from chaser.runtime import Runtime
from chaser.service import recovery
from chaser.service.container import Services, build_services
from chaser.service.nodes import NodeCapacity

log = logging.getLogger("chaser.api")
REAPER_INTERVAL_S = 5.0
# An oversized body is read (and discarded) up to 4x the transfer limit, then the connection closes.
DRAIN_LIMIT_FACTOR = 4


def create_api(settings: Settings, *, runtime: Runtime | None = None,
               runtime_factory: Callable[[], Runtime] | None = None,
               reaper_interval: float = REAPER_INTERVAL_S,
               node_capacity: Callable[[], NodeCapacity] | None = None, node: bool = False) -> FastAPI:
    """The REST API over `runtime`, or over the one `runtime_factory` makes at start-up
    (a QEMU runtime reaps what a dead server left: it is made when the server starts);
    `node_capacity`: what this server registers as its node's (chaser/service/nodes.py).
    `node`: served as a `chaser node` (only to API replicas: chaser/api/node_guard.py).
    Without a local runtime (CHASER_LOCAL_RUNTIME=false) it is an API replica: no runtime,
    every request that needs a VM routed to a node (chaser/api/node_routing.py)."""
    if not settings.local_runtime:
        return create_replica(settings)
    if (runtime is None) == (runtime_factory is None):
        raise ValueError("pass one of runtime or runtime_factory")
    services = build_services(settings, runtime, node_capacity=node_capacity, node=node)
    readiness = {"runtime": False}  # the runtime prepared the host (/readyz)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if not services.sessions.has_runtime:
            assert runtime_factory is not None
            services.sessions.attach_runtime(runtime_factory())
        await services.sessions.runtime.prepare_host()  # e.g. removes a dead server's namespaces
        readiness["runtime"] = True
        await asyncio.to_thread(services.mover.remove_leftovers)  # of moves a crash cut short
        await asyncio.to_thread(services.nodes.register)  # before recovery: it knows its own sessions by it
        await recovery.adopt_running(services.sessions)  # VMs an earlier process left running
        services.reaper.recover_on_start()
        warm = asyncio.create_task(services.sessions.start_warm_pool(), name="warm-pool")
        reaper = asyncio.create_task(services.reaper.run(reaper_interval), name="session-reaper")
        heartbeat = asyncio.create_task(services.nodes.run(services.sessions), name="node-heartbeat")
        try:
            yield
        finally:
            for task in (warm, reaper, heartbeat):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(warm, reaper, heartbeat)
            if settings.keep_vms_on_exit:  # they run on for the next server (docs/operations.md)
                await recovery.detach(services.sessions)
            else:
                await services.sessions.shutdown()
            await services.mover.close()
            await services.audit.flush()  # the shutdown's own events (server_shutdown ends) included
            services.db.dispose()

    app = build_app(settings, services, lifespan, runtime_prepared=lambda: readiness["runtime"])
    if node:
        from chaser.api.node_guard import NodeGuardMiddleware

        assert settings.node_token is not None  # `chaser node` checks it first
        from chaser.api.routes import node_internal

        app.include_router(node_internal.router)
        app.add_middleware(NodeGuardMiddleware, token=settings.node_token.get_secret_value())
    return app


def create_replica(settings: Settings) -> FastAPI:
    """An API replica: the database's answers here, a VM's requests on its node."""
    from chaser.api.node_proxy import NodeProxy
    from chaser.api.node_routing import NodeRoutingMiddleware
    from chaser.service.node_client import tls_verify

    services = build_services(settings, None)
    assert settings.node_token is not None  # the settings refuse a replica without one
    proxy = NodeProxy(settings.node_token.get_secret_value(), verify=tls_verify(settings))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # No VM, no node of its own: it only helps notice lost nodes (with one node left, nobody else would).
        sweeper = asyncio.create_task(services.nodes.watch_others(services.sessions), name="lost-nodes")
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await proxy.close()
            await services.mover.close()
            await services.audit.flush()
            services.db.dispose()

    app = build_app(settings, services, lifespan, runtime_prepared=lambda: True)
    app.add_middleware(NodeRoutingMiddleware, services=services, settings=settings, proxy=proxy)
    return app


def build_app(settings: Settings, services: Services, lifespan: Callable[[FastAPI], Any], *,
              runtime_prepared: Callable[[], bool]) -> FastAPI:
    app = FastAPI(
        title="Chaser API",
        version=__version__,
        description="Sandbox sessions in microVMs. Errors are `{\"code\", \"message\"}`; "
                    "every response carries `x-request-id`.",
        lifespan=lifespan,
    )
    app.state.services = services
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(AuditOriginMiddleware)  # the client address the audit log records
    app.add_middleware(RateLimitHeadersMiddleware)  # x-ratelimit-* of the caller's key (chaser/api/ratelimit.py)
    # An error answered before the body was read (413 first of all): drain it so the client reads the answer.
    app.add_middleware(DrainBodyMiddleware, max_bytes=DRAIN_LIMIT_FACTOR * settings.max_transfer_bytes)

    from chaser.api.routes import audit, commands, exec, files, images, keys, nodes, sessions, workspaces

    for module in (sessions, exec, commands, files, workspaces, keys, images, audit, nodes):
        app.include_router(module.router)
    from chaser.api.routes import unavailable  # what a self-hosted server does not serve: 501

    app.include_router(unavailable.router)

    # Interactive access: PTY WebSocket, port forwarding (gateway, tunnels), host-style routing.
    from chaser.api.host_routing import HostRoutingMiddleware
    from chaser.api.routes import forward, pty

    app.include_router(pty.router)
    app.include_router(forward.api_router)
    app.include_router(forward.router)
    app.add_middleware(HostRoutingMiddleware, settings=settings)

    @app.get("/health", tags=["meta"], summary="Liveness probe (no auth)")
    @app.get("/healthz", tags=["meta"], summary="Liveness probe (no auth): the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    from chaser.api.health import install_readiness

    install_readiness(app, services, runtime_prepared=runtime_prepared)

    from chaser.api.access_log import redact_tokens_in_logs
    from chaser.api.console import install_console  # the web console's static files at /console/

    install_console(app)
    redact_tokens_in_logs()  # the console's PTY WebSocket has the key in its query

    from chaser.api.openapi import install_extra_paths

    install_extra_paths(app)
    return app
