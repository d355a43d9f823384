"""Which agent gets a task: the seed's score, over the candidates the design allows.

Candidates are online, not draining, ready, below their slot limit, offer the runner
the task needs (when it needs one: a capability, never overridden), and match a
requirement in their specialties or capabilities (a task without requirements, or only
``general``, matches any agent). Requirements come only from explicit labels or the API;
preferences (keywords of the issue) raise the score and restrict nothing. The best score
wins; ties go to the less loaded agent, then the id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property


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

    @cached_property
    def specialty_set(self) -> frozenset[str]:
        """The specialties, lower case (built once: a claim scores every agent per task)."""
        return frozenset(s.lower() for s in self.specialties)

    @cached_property
    def skills(self) -> frozenset[str]:
        """Specialties and capabilities, lower case."""
        return self.specialty_set | {c.lower() for c in self.capabilities}

    @cached_property
    def load(self) -> float:
        return min(1.0, self.active / self.capacity) if self.capacity else 1.0

    @cached_property
    def success_rate(self) -> float:
        finished = self.completed + self.failed
        return self.completed / finished if finished else 1.0


def matches(agent: AgentView, requirements: Sequence[str]) -> bool:
    wanted = {r for r in requirements if r != "general"}
    if not wanted:
        return True
    return not wanted.isdisjoint(agent.skills) or "general" in agent.specialty_set


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
    return _score(agent, _wanted(requirements, preferences), estimated_minutes)


def _wanted(requirements: Sequence[str], preferences: Sequence[str]) -> frozenset[str]:
    return frozenset(r.lower() for r in (*requirements, *preferences))


def _score(agent: AgentView, wanted: frozenset[str], estimated_minutes: int) -> float:
    value = 10.0 * len(wanted & agent.specialty_set)
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
    return sorted(
        _candidates(agents, requirements, require_match=require_match, runner=runner),
        key=_rank(requirements, estimated_minutes, preferences),
    )


def best(
    agents: Sequence[AgentView],
    requirements: Sequence[str],
    estimated_minutes: int,
    *,
    require_match: bool = True,
    preferences: Sequence[str] = (),
    runner: str | None = None,
) -> AgentView | None:
    """The first agent :func:`pick` would list (None: no candidate), without sorting."""
    return min(
        _candidates(agents, requirements, require_match=require_match, runner=runner),
        key=_rank(requirements, estimated_minutes, preferences),
        default=None,
    )


def _candidates(
    agents: Sequence[AgentView],
    requirements: Sequence[str],
    *,
    require_match: bool,
    runner: str | None,
) -> list[AgentView]:
    return [
        a
        for a in agents
        if a.active < a.capacity
        and offers(a, runner)
        and (not require_match or matches(a, requirements))
    ]


def _rank(
    requirements: Sequence[str], estimated_minutes: int, preferences: Sequence[str]
) -> Callable[[AgentView], tuple[float, float, str]]:
    """Best score first; ties to the less loaded agent, then the id."""
    wanted = _wanted(requirements, preferences)
    return lambda a: (-_score(a, wanted, estimated_minutes), a.load, a.id)


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
