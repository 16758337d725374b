"""Workspace wire schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from chaser.models.common import RequestModel


class WorkspaceCreate(RequestModel):
    name: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    session_type: str | None = None
    image: str | None = Field(default=None, max_length=1000)
    template: bool | None = None
    clone_from: str | None = None  # accepted for SDK compatibility; must be null


class WorkspacePublic(BaseModel):
    id: str
    name: str | None = None
    image: str
    template: bool = False
    session_type: Literal["sandbox"] = "sandbox"
    status: str = "ready"
    persistence: bool = True
    created_at: datetime
    active_session_id: str | None = None
    last_session_id: str | None = None


class WorkspaceDeletedPublic(BaseModel):
    id: str
    deleted: bool = True
