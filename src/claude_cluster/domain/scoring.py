"""Which agent gets a task: the seed's score, over the candidates the design allows.

Candidates are online, not draining, ready, below their slot limit, offer the runner
the task needs (when it needs one: a capability, never overridden), and match a
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
    #: the runners the agent offers; None: not told (an older agent)
    runners: Sequence[str] | None = None

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


def offers(agent: AgentView, runner: str | None) -> bool:
    """Whether ``agent`` can run a task that needs ``runner`` (None: any runner)."""
    return runner is None or runner in (agent.runners or ())


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
    runner: str | None = None,
) -> list[AgentView]:
    """Agents with a free slot that offer ``runner`` and match the requirements, best
    first (preferences only score). A manual assignment (``require_match=False``)
    overrides the match, not the runner: an agent without it could only refuse the run."""
    candidates = [
        a
        for a in agents
        if a.active < a.capacity
        and offers(a, runner)
        and (not require_match or matches(a, requirements))
    ]
    return sorted(
        candidates,
        key=lambda a: (-score(a, requirements, estimated_minutes, preferences), a.load, a.id),
    )


def waiting_for(
    agents: Sequence[AgentView], requirements: Sequence[str], runner: str | None = None
) -> str | None:
    """Why no agent of ``agents`` (the online, ready ones) can ever take a task with these
    requirements and this runner, or None when one can (busy or not)."""
    if any(matches(a, requirements) and offers(a, runner) for a in agents):
        return None
    if not agents:
        return "waiting for an agent: none is online and ready"
    wanted = [r for r in requirements if r != "general"]
    if runner is not None:
        wanted.append(f"runner {runner}")
    return f"waiting for an agent with: {', '.join(wanted)}"
