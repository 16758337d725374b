"""API key wire schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from chaser.models.common import RequestModel

SCOPES = (
    "sessions.read", "sessions.write", "exec.write", "files.read", "files.write",
    "workspaces.read", "workspaces.write", "keys.read", "keys.write", "audit.read",
)
FULL_ACCESS = "full_access"


class KeyCreate(RequestModel):
    name: str | None = Field(default=None, max_length=200)
    scopes: list[str] | None = None
    format: Literal["chaser", "e2b"] = Field(
        default="chaser", description="`e2b`: the key is `e2b_` + 40 hex, the shape E2B's JS SDK insists on "
        "(for `E2B_API_KEY`, docs/e2b.md); either works as `Bearer` and `X-API-KEY`")


class KeyPublic(BaseModel):
    id: str
    key_prefix: str
    name: str | None = None
    scopes: list[str]
    full_access: bool
    created_at: datetime
    last_used_at: datetime | None = None
    revoked: datetime | None = None  # when it was revoked (as chaser-sdk types it: a string), null while valid
    revoked_at: datetime | None = None  # the same


class KeysPublic(BaseModel):
    keys: list[KeyPublic]


class KeyCreatedPublic(BaseModel):
    id: str
    key: str  # shown once
    key_prefix: str
    name: str | None = None
    scopes: list[str]
    full_access: bool


class KeyRevokedPublic(BaseModel):
    id: str
    revoked: bool = True
