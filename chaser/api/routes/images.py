"""`/v1/images`: the server's OCI image store (full-access keys only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends

from chaser import errors
from chaser.api.deps import CurrentKey, ServicesDep
from chaser.api.routes import AUTH_ERROR_RESPONSES, IMAGE_ERROR_RESPONSES, error_responses
from chaser.models.images import ImagePrune, ImagePublic, ImagePull, ImagesDeletedPublic, ImagesPublic
from chaser.service.images import check_image_ref
from chaser.service.keys import Principal

router = APIRouter(prefix="/v1/images", tags=["images"], responses=AUTH_ERROR_RESPONSES)


async def require_admin(principal: CurrentKey) -> Principal:
    if not principal.full_access:
        raise errors.Forbidden("managing images needs a full-access (admin) key")
    return principal


Admin = Annotated[Principal, Depends(require_admin)]


def in_use(services) -> set[str]:
    return {live.image_digest for live in services.sessions.live.values() if live.image_digest}


@router.get("", response_model=ImagesPublic, summary="List cached images")
async def list_images(services: ServicesDep, _admin: Admin) -> ImagesPublic:
    return ImagesPublic(images=[ImagePublic(**row) for row in services.sessions.images.store.list()])


@router.post("", response_model=ImagePublic, responses={**error_responses(400), **IMAGE_ERROR_RESPONSES},
             summary="Pull an image into the store (cached by digest)")
async def pull_image(services: ServicesDep, _admin: Admin, body: ImagePull) -> ImagePublic:
    ref = check_image_ref(body.ref)
    image = await services.sessions.images.store.pull(ref)
    return ImagePublic(ref=image.reference, digest=image.digest, size=image.size_bytes,
                       config=image.config.to_dict())


@router.post("/prune", response_model=ImagesDeletedPublic, summary="Remove unused images beyond a size budget")
async def prune_images(services: ServicesDep, _admin: Admin,
                       body: ImagePrune | None = Body(default=None)) -> ImagesDeletedPublic:
    budget = body.budget_bytes if body else None
    store = services.sessions.images.store
    return ImagesDeletedPublic(deleted=store.prune(budget_bytes=budget, in_use=in_use(services)))


@router.delete("/{ref:path}", response_model=ImagesDeletedPublic, responses=error_responses(400, 404, 409),
               summary="Remove an image (409 while a session uses it)")
async def remove_image(ref: str, services: ServicesDep, _admin: Admin) -> ImagesDeletedPublic:
    return ImagesDeletedPublic(deleted=services.sessions.images.store.remove(ref, in_use=in_use(services)))
