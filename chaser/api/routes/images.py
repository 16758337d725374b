"""`/v1/images`: the server's OCI image store (full-access keys only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends

from chaser import errors
from chaser.api.deps import CurrentKey, ServicesDep
from chaser.api.routes import AUTH_ERROR_RESPONSES, IMAGE_ERROR_RESPONSES, error_responses
from chaser.models.images import ImagePrune, ImagePublic, ImagePull, ImagesDeletedPublic, ImagesPublic
from chaser.service.keys import Principal

router = APIRouter(prefix="/v1/images", tags=["images"], responses=AUTH_ERROR_RESPONSES)


async def require_admin(principal: CurrentKey) -> Principal:
    if not principal.full_access:
        raise errors.Forbidden("managing images needs a full-access (admin) key")
    return principal


Admin = Annotated[Principal, Depends(require_admin)]


@router.get("", response_model=ImagesPublic, summary="List cached images")
async def list_images(services: ServicesDep, _admin: Admin) -> ImagesPublic:
    rows = await services.images.list_images()
    return ImagesPublic(images=[ImagePublic(**row) for row in rows])


@router.post("", response_model=ImagePublic, responses={**error_responses(400), **IMAGE_ERROR_RESPONSES},
             summary="Pull an image into the store (cached by digest)")
async def pull_image(services: ServicesDep, _admin: Admin, body: ImagePull) -> ImagePublic:
    image = await services.images.pull(body.ref)
    return ImagePublic(ref=image.reference, digest=image.digest, size=image.size_bytes,
                       config=image.config.to_dict())


@router.post("/prune", response_model=ImagesDeletedPublic, summary="Remove unused images beyond a size budget")
async def prune_images(services: ServicesDep, _admin: Admin,
                       body: ImagePrune | None = Body(default=None)) -> ImagesDeletedPublic:
    budget = body.budget_bytes if body else None
    return ImagesDeletedPublic(deleted=await services.images.prune(budget))


@router.delete("/{ref:path}", response_model=ImagesDeletedPublic, responses=error_responses(400, 404, 409),
               summary="Remove an image (409 while a session uses it)")
async def remove_image(ref: str, services: ServicesDep, _admin: Admin) -> ImagesDeletedPublic:
    return ImagesDeletedPublic(deleted=await services.images.remove(ref))
