"""`/v1/keys`: list, create (shown once), revoke."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Body

from chaser.api.deps import KeysRead, KeysWrite, ServicesDep
from chaser.api.routes import AUTH_ERROR_RESPONSES, error_responses
from chaser.models import KeyCreate, KeyCreatedPublic, KeyPublic, KeyRevokedPublic, KeysPublic
from chaser.service.records import KeyRecord

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=AUTH_ERROR_RESPONSES)


def key_public(row: KeyRecord) -> KeyPublic:
    return KeyPublic(id=row.id, key_prefix=row.key_prefix, name=row.name, scopes=list(row.scopes or []),
                     full_access=row.full_access, created_at=row.created_at, last_used_at=row.last_used_at,
                     revoked=row.revoked_at, revoked_at=row.revoked_at)


@router.get("", response_model=KeysPublic, summary="List the account's API keys")
async def list_keys(services: ServicesDep, principal: KeysRead) -> KeysPublic:
    rows = await asyncio.to_thread(services.keys.list, principal.account_id)
    return KeysPublic(keys=[key_public(row) for row in rows])


@router.post("", response_model=KeyCreatedPublic, responses=error_responses(400),
             summary="Create an API key (the key is shown only here)")
async def create_key(services: ServicesDep, principal: KeysWrite,
                     body: KeyCreate | None = Body(default=None)) -> KeyCreatedPublic:
    body = body or KeyCreate()
    created = await asyncio.to_thread(services.keys.create_for, principal, name=body.name, scopes=body.scopes,
                                      key_format=body.format)
    row = created.row
    return KeyCreatedPublic(id=row.id, key=created.key, key_prefix=row.key_prefix, name=row.name,
                            scopes=list(row.scopes or []), full_access=row.full_access)


@router.delete("/{key_id}", response_model=KeyRevokedPublic, responses=error_responses(404),
                summary="Revoke an API key")
async def revoke_key(key_id: str, services: ServicesDep, principal: KeysWrite) -> KeyRevokedPublic:
    row = await asyncio.to_thread(services.keys.revoke, principal, key_id)
    return KeyRevokedPublic(id=row.id, revoked=True)
