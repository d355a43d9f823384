"""``/api/v1/tokens``: API tokens for people and scripts, with a role (admin or viewer).

Only admins manage them. A new token is shown once in the answer; the coordinator keeps
only its SHA-256.
"""

from __future__ import annotations

from fastapi import APIRouter, status

from claude_cluster.coordinator.api.deps import Admin, CoordinatorDep, IdPath
from claude_cluster.coordinator.api.schemas import TokenCreate, TokenCreated, TokenOut

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_token(body: TokenCreate, coordinator: CoordinatorDep, _: Admin) -> TokenCreated:
    row, token = await coordinator.create_api_token(body.name, body.role)
    return TokenCreated(**TokenOut.model_validate(row).model_dump(), token=token)


@router.get("")
async def list_tokens(coordinator: CoordinatorDep, _: Admin) -> list[TokenOut]:
    return [TokenOut.model_validate(row) for row in await coordinator.repo.list_api_tokens()]


@router.delete("/{token_id}")
async def revoke_token(token_id: IdPath, coordinator: CoordinatorDep, _: Admin) -> TokenOut:
    return TokenOut.model_validate(await coordinator.revoke_api_token(token_id))
