"""The HTTP API: FastAPI app factory, dependencies, routes, the one error handler."""

from chaser.api.app import create_api

__all__ = ["create_api"]
