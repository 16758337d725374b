"""`/v1/images` schemas."""

from __future__ import annotations

from pydantic import BaseModel, Field

from chaser.models.common import RequestModel


class ImagePull(RequestModel):
    ref: str = Field(min_length=1, max_length=1024,
                     description="OCI reference, e.g. python:3.12 or ghcr.io/org/img@sha256:…")


class ImageConfigPublic(BaseModel):
    env: dict[str, str]
    workdir: str | None
    user: str | None


class ImagePublic(BaseModel):
    ref: str | None
    digest: str
    size: int
    last_used: str | None = None
    created: str | None = None
    config: ImageConfigPublic | None = None


class ImagesPublic(BaseModel):
    images: list[ImagePublic]


class ImagePrune(RequestModel):
    budget_bytes: int | None = Field(default=None, ge=0, description="Keep at most this many bytes of unused images")


class ImagesDeletedPublic(BaseModel):
    deleted: list[str] = Field(description="Digests removed from the store")
