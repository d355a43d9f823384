"""API tokens: stored by hash; a revoked token no longer authenticates."""

from __future__ import annotations

from sqlalchemy import select

from claude_cluster.coordinator.store.common import StoreBase, utcnow
from claude_cluster.coordinator.store.tables import ApiToken


class TokenQueries(StoreBase):
    async def add_api_token(self, name: str, token_hash: str) -> ApiToken:
        async with self._sessions.begin() as s:
            row = ApiToken(name=name, token_hash=token_hash, created_at=utcnow(), revoked=False)
            s.add(row)
            return row

    async def api_token_by_hash(self, token_hash: str) -> ApiToken | None:
        async with self._sessions() as s:
            return (
                await s.scalars(
                    select(ApiToken).where(
                        ApiToken.token_hash == token_hash, ApiToken.revoked.is_(False)
                    )
                )
            ).first()
