"""Issue analysis at task creation: the seed's label and keyword rules.

Priority comes from labels (with ``urgent`` reachable, which the seed's rules never were),
requirements only from explicit ``claude-code-<area>`` labels, preferences from keywords in
the title and body (they raise an agent's score but never keep a task from an agent: "fix"
in an issue must not make it wait forever on a fleet without a ``testing`` agent),
complexity and an estimated duration from a few words that predict the size of the work.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from claude_cluster.domain.states import Priority

_URGENT_LABELS = frozenset({"urgent", "claude-code-urgent", "p0", "critical-urgent"})
_HIGH_LABELS = frozenset({"critical", "high-priority", "high", "p1"})
_LOW_LABELS = frozenset({"low-priority", "nice-to-have", "low", "p3"})

#: preferred area → keywords, matched as whole words in title + body (the seed's table)
PREFERENCE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "backend": ("api", "backend", "database", "server"),
    "frontend": ("ui", "frontend", "react", "component"),
    "testing": ("test", "testing", "bug", "fix"),
    "devops": ("deploy", "ci", "docker", "infra"),
}
#: a trigger label like ``claude-code-backend`` names the requirement directly
_LABEL_REQUIREMENTS = {
    "claude-code-backend": "backend",
    "claude-code-frontend": "frontend",
    "claude-code-testing": "testing",
    "claude-code-infrastructure": "devops",
    "claude-code-database": "database",
    "claude-code-security": "security",
}
_HIGH_COMPLEXITY = ("refactor", "architecture", "migration")
_LOW_COMPLEXITY = ("fix", "update", "improve")
DURATION_MINUTES = {"low": 60, "medium": 180, "high": 480}


@dataclass(frozen=True)
class Analysis:
    priority: Priority
    #: what an agent must have to take the task (explicit labels only; ``general`` = any)
    requirements: list[str]
    #: what raises an agent's score (keywords in the title and body)
    preferences: list[str]
    complexity: str
    estimated_duration_minutes: int


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def priority_from_labels(labels: Iterable[str]) -> Priority:
    names = {label.strip().lower() for label in labels}
    if names & _URGENT_LABELS:
        return Priority.URGENT
    if names & _HIGH_LABELS:
        return Priority.HIGH
    if names & _LOW_LABELS:
        return Priority.LOW
    return Priority.MEDIUM


def requirements_from_labels(labels: Iterable[str]) -> list[str]:
    """The areas ``claude-code-<area>`` labels name (``general`` when none does)."""
    found: list[str] = []
    for label in labels:
        req = _LABEL_REQUIREMENTS.get(label.strip().lower())
        if req and req not in found:
            found.append(req)
    return found or ["general"]


def preferences_from_text(title: str, body: str) -> list[str]:
    """The areas keywords in the title and body point at: preferred, never required."""
    words = _words(f"{title}\n{body}")
    return [area for area, keys in PREFERENCE_KEYWORDS.items() if words.intersection(keys)]


def complexity_from_text(title: str, body: str) -> str:
    words = _words(f"{title}\n{body}")
    if words.intersection(_HIGH_COMPLEXITY):
        return "high"
    if words.intersection(_LOW_COMPLEXITY):
        return "low"
    return "medium"


def analyse(title: str, body: str, labels: Iterable[str] = ()) -> Analysis:
    labels = list(labels)
    complexity = complexity_from_text(title, body)
    return Analysis(
        priority=priority_from_labels(labels),
        requirements=requirements_from_labels(labels),
        preferences=preferences_from_text(title, body),
        complexity=complexity,
        estimated_duration_minutes=DURATION_MINUTES[complexity],
    )
