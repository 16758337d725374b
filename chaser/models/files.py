"""File transfer wire schemas."""

from __future__ import annotations

from pydantic import BaseModel


class UploadPublic(BaseModel):
    path: str
    size: int
