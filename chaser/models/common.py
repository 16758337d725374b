"""Shared wire pieces: the error body and the request base class."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer
from pydantic.json_schema import JsonDict

MAX_COMMAND_BYTES = 64 * 1024
MAX_TIMEOUT_MS = 24 * 3600 * 1000
MAX_PATH_CHARS = 4096

# JSON Schema of what the checks below and the services accept, for /openapi.json only: each
# check keeps its own message (and error code), so these go in `json_schema_extra`, never in
# `Field(pattern=…)`. What matches is accepted (tests/unit/test_openapi_schemas.py); a few odd
# forms the checks also take (surrounding spaces, say) are left out, and `maxLength` counts
# characters where a limit is in bytes of UTF-8.
NO_NUL = "^[^\\u0000]*$"
# Not blank: `str.strip()` also strips U+001C..U+001F and U+0085, which ECMA-262's \s does not.
COMMAND_SCHEMA: JsonDict = {"maxLength": MAX_COMMAND_BYTES,
                            "pattern": "^[^\\u0000]*[^\\s\\u0000\\u001c-\\u001f\\u0085][^\\u0000]*$",
                            "description": "Run with /bin/sh -c; not blank, no NUL, at most 64 KiB of UTF-8"}
PATH_SCHEMA: JsonDict = {"maxLength": MAX_PATH_CHARS, "pattern": NO_NUL}
ENV_SCHEMA: JsonDict = {"maxProperties": 1000,
                        "propertyNames": {"minLength": 1, "maxLength": 1024, "pattern": "^[^=\\u0000]*$"},
                        "additionalProperties": {"type": "string", "maxLength": 128 * 1024, "pattern": NO_NUL}}
# An image reference as chaser/service/images.py check_image_ref and chaser/images/reference.py
# accept it over the API (a registry reference; empty: the default image).
_COMPONENT = "[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_FIRST_COMPONENT = "[a-z0-9]+(?:(?:_|__|-+)[a-z0-9]+)*"  # a first part with '.' or ':' is a registry host
_HOST_PART = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = (f"(?:{_HOST_PART}(?:\\.{_HOST_PART})+(?::[0-9]+)?|{_HOST_PART}:[0-9]+|localhost(?::[0-9]+)?"
         "|\\[[0-9a-fA-F]*:[0-9a-fA-F:]*\\](?::[0-9]+)?)")
_TAG_DIGEST = "(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?"
# The repository name is at most 255 characters once normalised (docker.io/ and, for one
# component, library/ prepended; a Hub alias host with one component grows by 2), so each form
# bounds its own length in a lookahead.
IMAGE_REF_PATTERN = (
    "^(?:|(?!(?:oci|oci-archive|docker-archive|docker|dir)(?::|$))"
    f"(?:(?=.{{1,253}}{_TAG_DIGEST}$){_HOST}/{_COMPONENT}(?:/{_COMPONENT})*"
    f"|(?=.{{1,245}}{_TAG_DIGEST}$){_FIRST_COMPONENT}(?:/{_COMPONENT})+"
    f"|(?=.{{1,237}}{_TAG_DIGEST}$){_COMPONENT})"
    f"{_TAG_DIGEST})$"
)


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
