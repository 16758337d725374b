"""Shared wire pieces: the error body and the request base class."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

MAX_COMMAND_BYTES = 64 * 1024
MAX_TIMEOUT_MS = 24 * 3600 * 1000
MAX_PATH_CHARS = 4096


class RequestModel(BaseModel):
    """Request bodies: unknown fields are an error (400), never silently ignored."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ErrorPublic(BaseModel):
    code: str
    message: str


def check_env(env: dict[str, str] | None) -> dict[str, str] | None:
    if env is None:
        return None
    if len(env) > 1000:
        raise ValueError("at most 1000 environment variables")
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or len(key) > 1024:
            raise ValueError(f"invalid environment variable name {key[:64]!r}")
        if "\0" in value:
            raise ValueError(f"environment variable {key} contains a NUL byte")
        if len(value) > 128 * 1024:
            raise ValueError(f"environment variable {key} is too long")
    return env


def check_command(command: str) -> str:
    if not command.strip():
        raise ValueError("command must not be empty")
    if len(command.encode("utf-8", "surrogatepass")) > MAX_COMMAND_BYTES:
        raise ValueError(f"command is longer than {MAX_COMMAND_BYTES} bytes")
    if "\0" in command:
        raise ValueError("command contains a NUL byte")
    return command


def check_path(path: str | None) -> str | None:
    if path is None:
        return None
    if "\0" in path:
        raise ValueError("path contains a NUL byte")
    if len(path) > MAX_PATH_CHARS:
        raise ValueError("path is too long")
    return path
