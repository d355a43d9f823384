"""API tokens (people and scripts) and dashboard sessions, both stored by SHA-256 hash.

A token's role is ``admin`` or ``viewer`` (read-only); a revoked token no longer
authenticates. A session lives until it expires or its browser signs out.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import String, cast, delete, literal, null, select, union_all

from claude_cluster.coordinator.store.agents import RESET_TOKEN_HASH
from claude_cluster.coordinator.store.common import StoreBase, get_or_raise, utcnow
from claude_cluster.coordinator.store.tables import Agent, ApiToken, DashboardSession

#: who holds a token: ``("agent", agent_id)`` or ``(role, None)`` for an API token
Holder = tuple[str, str | None]


class TokenQueries(StoreBase):
    async def add_api_token(self, name: str, token_hash: str, role: str) -> ApiToken:
        async with self._sessions.begin() as s:
            row = ApiToken(
                name=name, token_hash=token_hash, created_at=utcnow(), revoked=False, role=role
            )
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

    async def token_holder(self, token_hash: str) -> Holder | None:
        """Whose token this is, an agent's or a live API token's, in one statement (every
        agent request asks, so it is one round trip, not one per kind of token)."""
        if token_hash == RESET_TOKEN_HASH:
            return None
        agents = select(literal("agent").label("kind"), Agent.id.label("agent_id")).where(
            Agent.token_hash == token_hash
        )
        api_tokens = select(
            ApiToken.role.label("kind"), cast(null(), String).label("agent_id")
        ).where(ApiToken.token_hash == token_hash, ApiToken.revoked.is_(False))
        async with self._sessions() as s:
            row = (await s.execute(union_all(agents, api_tokens).limit(1))).first()
        return None if row is None else (row.kind, row.agent_id)

    async def list_api_tokens(self) -> Sequence[ApiToken]:
        async with self._sessions() as s:
            return (await s.scalars(select(ApiToken).order_by(ApiToken.id))).all()

    async def revoke_api_token(self, token_id: int) -> ApiToken:
        async with self._sessions.begin() as s:
            row = await get_or_raise(s, ApiToken, token_id, "API token")
            row.revoked = True
            return row

    # --- dashboard sessions -----------------------------------------------------------

    async def add_session(self, id_hash: str, role: str, expires_at: datetime) -> None:
        """Store a new session (and forget the expired ones while at it)."""
        now = utcnow()
        async with self._sessions.begin() as s:
            await s.execute(delete(DashboardSession).where(DashboardSession.expires_at <= now))
            s.add(
                DashboardSession(id_hash=id_hash, role=role, created_at=now, expires_at=expires_at)
            )

    async def session_role(self, id_hash: str) -> str | None:
        """The role of a live session; None when unknown, signed out or expired."""
        async with self._sessions() as s:
            row = await s.get(DashboardSession, id_hash)
            if row is None or row.expires_at <= utcnow():
                return None
            return row.role

    async def delete_session(self, id_hash: str) -> None:
        async with self._sessions.begin() as s:
            await s.execute(delete(DashboardSession).where(DashboardSession.id_hash == id_hash))
