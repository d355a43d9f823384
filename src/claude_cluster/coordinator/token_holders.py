"""Who holds a bearer token, with agents' tokens remembered for a few seconds.

Every request an agent makes (heartbeats, events, its result, the delivery check) carries
its token, and looking it up was a database transaction per request on the hot path. An
agent token, once resolved, is trusted for :data:`AGENT_TOKEN_TTL` seconds by this
process; resetting or re-registering the agent through this process forgets it at once,
other replicas after at most the TTL (SPEC §6). API tokens are never remembered, so
revoking one takes effect on the next request. Unknown tokens are not remembered either.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from claude_cluster.coordinator.store.repository import Repository
from claude_cluster.coordinator.store.tokens import Holder

#: seconds an agent's token is trusted without asking the database again
AGENT_TOKEN_TTL = 5.0
#: remembered tokens at most (far more than agents; a full table is simply emptied)
MAX_REMEMBERED = 4096


class TokenHolders:
    def __init__(
        self,
        repo: Repository,
        *,
        ttl: float = AGENT_TOKEN_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._repo = repo
        self._ttl = ttl
        self._clock = clock
        #: token hash → (agent id, trusted until)
        self._agents: dict[str, tuple[str, float]] = {}

    async def holder(self, token_hash: str) -> Holder | None:
        """``("agent", id)``, ``(role, None)`` for a live API token, or None."""
        now = self._clock()
        remembered = self._agents.get(token_hash)
        if remembered is not None and remembered[1] > now:
            return ("agent", remembered[0])
        holder = await self._repo.token_holder(token_hash)
        if holder is not None and holder[0] == "agent" and holder[1] is not None:
            if len(self._agents) >= MAX_REMEMBERED:
                self._agents.clear()
            self._agents[token_hash] = (holder[1], now + self._ttl)
        else:
            self._agents.pop(token_hash, None)
        return holder

    def forget_agent(self, agent_id: str) -> None:
        """The agent's token changed or was revoked here: ask the database next time."""
        self._agents = {h: entry for h, entry in self._agents.items() if entry[0] != agent_id}
