"""The composition root: the server assembled from its parts.

    settings → store (SQLite or PostgreSQL) → services → REST API (chaser/api)
             → runtime: QEMU on this machine (chaser/vm), made at start-up
             → MCP endpoint at /v1/mcp (chaser/mcp; it calls the API back with the caller's key)

Nothing else imports `chaser.vm` for the server, and only `chaser server` (and
tests) import this module, so the layers below stay independent of each other.
"""

from __future__ import annotations

import os
import ssl

from fastapi import FastAPI

from chaser.api.app import REAPER_INTERVAL_S, create_api
from chaser.api.e2b import Ingress, ingress_app, mount_e2b
from chaser.api.ratelimit import check_rate
from chaser.config import Settings, get_settings
from chaser.mcp.asgi import MCPEndpoint
from chaser.runtime import Runtime
from chaser.service.nodes import NodeCapacity


def qemu_runtime(settings: Settings) -> Runtime:
    from chaser.vm.runtime import Runtime as QemuRuntime

    # Its VMs outlive the process (the next server adopts them); it reaps what a dead one left.
    return QemuRuntime(settings, adoptable=True)


def node_capacity(settings: Settings) -> NodeCapacity:
    """What this server registers as its node's capacity: the host, less what admission keeps back."""
    from chaser.vm.admission import Admission

    limits = Admission(settings).limits
    return NodeCapacity(vcpus=os.cpu_count() or 1, sessions=limits.max_sessions,
                        memory_mib=max(0, limits.host_memory_total_mib - limits.memory_reserve_mib),
                        disk_mib=max(0, limits.disk_total_mib - limits.disk_reserve_mib))


def create_app(settings: Settings | None = None, runtime: Runtime | None = None, *,
               reaper_interval: float = REAPER_INTERVAL_S, node: bool = False) -> FastAPI:
    """The whole server: the API over `runtime` (default: QEMU on this machine) and MCP;
    `node`: as `chaser node` serves it (to API replicas only). With CHASER_LOCAL_RUNTIME=false:
    an API replica (no runtime: chaser/api/node_routing.py)."""
    settings = settings or get_settings()
    if runtime is not None:
        app = create_api(settings, runtime=runtime, reaper_interval=reaper_interval,
                         node_capacity=lambda: node_capacity(settings), node=node)
    else:
        app = create_api(settings, runtime_factory=lambda: qemu_runtime(settings), reaper_interval=reaper_interval,
                         node_capacity=lambda: node_capacity(settings), node=node)
    services = app.state.services
    mount_e2b(app)  # the E2B control plane at /e2b (its ingress: `e2b_ingress`, started by `chaser server`)

    async def authenticate(key: str) -> dict[str, str]:
        """The MCP request's key check: a request against its rate limit, like any other."""
        decision = await check_rate(services.rate_limiter, services.keys.authenticate(key).key_id)
        return decision.headers() if decision is not None else {}

    # MCP (JSON-RPC 2.0, stateless streamable HTTP); its tools call the API back with the caller's key.
    endpoint = MCPEndpoint(authenticate=authenticate, loopback_tls=loopback_tls_context(settings))
    app.router.add_route("/v1/mcp", endpoint,  # type: ignore[arg-type]
                         methods=["POST"], include_in_schema=False)  # an ASGI app: Starlette serves it as one
    return app


def e2b_ingress(app: FastAPI) -> Ingress:
    """The E2B sandbox ingress over `app`'s services (docs/e2b.md): an ASGI app of its own port."""
    return ingress_app(app)


def loopback_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """With TLS, what MCP tools calling this server over loopback trust: exactly the certificates
    of `CHASER_TLS_CERT` (the address is 127.0.0.1 or ::1, not a name the certificate carries)."""
    if settings.tls_cert is None:
        return None
    context = ssl.create_default_context(cafile=str(settings.tls_cert))
    context.check_hostname = False  # a pinned certificate: no name to check
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf itself may be the anchor
    return context
