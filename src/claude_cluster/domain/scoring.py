"""Which agent gets a task: the seed's score, over the candidates the design allows.

Candidates are online, not draining, ready, below their slot limit, and match a
requirement in their specialties or capabilities (a task without requirements, or only
``general``, matches any agent). Requirements come only from explicit labels or the API;
preferences (keywords of the issue) raise the score and restrict nothing. The best score
wins; ties go to the less loaded agent, then the id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class AgentView:
    """What scoring needs to know about an agent."""

    id: str
    specialties: Sequence[str]
    capabilities: Sequence[str]
    active: int
    capacity: int
    completed: int
    failed: int
    average_duration_seconds: float

    @property
    def load(self) -> float:
        return min(1.0, self.active / self.capacity) if self.capacity else 1.0

    @property
    def success_rate(self) -> float:
        finished = self.completed + self.failed
        return self.completed / finished if finished else 1.0


def matches(agent: AgentView, requirements: Sequence[str]) -> bool:
    wanted = {r for r in requirements if r != "general"}
    if not wanted:
        return True
    skills = {s.lower() for s in (*agent.specialties, *agent.capabilities)}
    return bool(wanted & skills) or "general" in {s.lower() for s in agent.specialties}


def score(
    agent: AgentView,
    requirements: Sequence[str],
    estimated_minutes: int,
    preferences: Sequence[str] = (),
) -> float:
    """+10 per requirement or preference in the specialties, −5·load, +2·success rate,
    −|average duration − estimate| / 60 (both in minutes)."""
    specialties = {s.lower() for s in agent.specialties}
    wanted = {r.lower() for r in (*requirements, *preferences)}
    value = 10.0 * sum(1 for r in wanted if r in specialties)
    value -= 5.0 * agent.load
    value += 2.0 * agent.success_rate
    if agent.average_duration_seconds > 0:
        value -= abs(agent.average_duration_seconds / 60.0 - estimated_minutes) / 60.0
    return value


def pick(
    agents: Sequence[AgentView],
    requirements: Sequence[str],
    estimated_minutes: int,
    *,
    require_match: bool = True,
    preferences: Sequence[str] = (),
) -> list[AgentView]:
    """Agents with a free slot that match the requirements, best first (preferences only
    score). A manual assignment (``require_match=False``) overrides the match."""
    candidates = [
        a
        for a in agents
        if a.active < a.capacity and (not require_match or matches(a, requirements))
    ]
    return sorted(
        candidates,
        key=lambda a: (-score(a, requirements, estimated_minutes, preferences), a.load, a.id),
    )


def waiting_for(agents: Sequence[AgentView], requirements: Sequence[str]) -> str | None:
    """Why no agent of ``agents`` (the online, ready ones) can ever take a task with these
    requirements, or None when one can (busy or not)."""
    if any(matches(a, requirements) for a in agents):
        return None
    wanted = [r for r in requirements if r != "general"]
    if not agents:
        return "waiting for an agent: none is online and ready"
    return f"waiting for an agent with: {', '.join(wanted)}"
