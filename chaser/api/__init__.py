"""The HTTP API: FastAPI app factory, dependencies, routes, the one error handler."""

from chaser.api.app import create_app

__all__ = ["create_app"]
