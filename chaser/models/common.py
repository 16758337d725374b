"""Shared wire pieces: the error body and the request base class."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

MAX_COMMAND_BYTES = 64 * 1024
MAX_TIMEOUT_MS = 24 * 3600 * 1000
MAX_PATH_CHARS = 4096


class RequestModel(BaseModel):
    """Request bodies: unknown fields are an error (400), never silently ignored."""

    model_config = ConfigDict(extra="forbid", strict=True)


class OmitNoneModel(BaseModel):
    """An answer whose `omit_if_none` fields are left out, not `null`, when they have no value:
    chaser-sdk types them as plain `int`/`str` (keys that may be missing, never null)."""

    omit_if_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_none(self, handler: SerializerFunctionWrapHandler):
        data = handler(self)
        if isinstance(data, dict):
            for name in self.omit_if_none:
                if name in data and data[name] is None:
                    del data[name]
        return data


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
