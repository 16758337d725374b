"""The E2B-compatible surface (docs/e2b.md): a second front door to the same services.

* `/e2b/…` on the API server (`E2B_API_URL=http://HOST:8080/e2b`): the control plane,
  routes.py, a sub-application of its own so that its errors are E2B's
  `{"code": <int>, "message"}` (errors.py) while the rest of the API keeps ours.
* The sandbox ingress (`E2B_SANDBOX_URL=http://HOST:49983`), ingress.py: a listener of its
  own that `chaser server` starts on `CHASER_E2B_INGRESS_PORT`.

Sandboxes are sessions (chaser/service/e2b.py); envd is the agent's (chaser/agent/envd).
"""

from __future__ import annotations

from fastapi import FastAPI

from chaser.api.e2b.errors import install_e2b_error_handlers
from chaser.api.e2b.ingress import Ingress
from chaser.service.e2b import E2BSandboxes

__all__ = ["Ingress", "mount_e2b"]

PREFIX = "/e2b"


def mount_e2b(app: FastAPI) -> E2BSandboxes:
    """Mount the control plane at /e2b on `app`; `app.state.e2b` is its sandboxes (the ingress's too)."""
    from chaser.api.e2b.routes import router

    services = app.state.services
    sandboxes = E2BSandboxes(services.sessions, services.settings)
    sub = FastAPI(title="Chaser E2B-compatible API", docs_url=None, redoc_url=None, openapi_url=None)
    sub.state.services = services
    sub.state.e2b = sandboxes
    install_e2b_error_handlers(sub)
    sub.include_router(router)
    app.mount(PREFIX, sub)
    app.state.e2b = sandboxes
    return sandboxes


def ingress_app(app: FastAPI) -> Ingress:
    """The ingress over the API app's services (mount_e2b first)."""
    return Ingress(app.state.services, app.state.e2b)
