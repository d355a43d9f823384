from __future__ import annotations

import pytest

from claude_cluster.domain.analysis import analyse, priority_from_labels, requirements_from_text
from claude_cluster.domain.states import Priority


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["urgent"], Priority.URGENT),
        (["claude-code-urgent"], Priority.URGENT),
        (["critical"], Priority.HIGH),
        (["high-priority", "low-priority"], Priority.HIGH),
        (["p1"], Priority.HIGH),
        (["nice-to-have"], Priority.LOW),
        (["p3"], Priority.LOW),
        (["bug"], Priority.MEDIUM),
        ([], Priority.MEDIUM),
        (["Urgent "], Priority.URGENT),
    ],
)
def test_priority_from_labels(labels: list[str], expected: Priority) -> None:
    assert priority_from_labels(labels) == expected


def test_requirements_match_whole_words_only() -> None:
    # "build" contains "ui" and "capital" contains "api": neither is a match
    assert requirements_from_text("Build the capital page", "") == ["general"]
    assert requirements_from_text("Fix the API", "the server is slow") == ["backend", "testing"]
    assert requirements_from_text("New React component", "") == ["frontend"]
    assert requirements_from_text("Deploy with Docker", "") == ["devops"]


def test_trigger_labels_name_requirements() -> None:
    assert requirements_from_text("Something", "", ["claude-code-security"]) == ["security"]


@pytest.mark.parametrize(
    ("title", "complexity", "minutes"),
    [
        ("Refactor the scheduler", "high", 480),
        ("Database migration", "high", 480),
        ("Fix a typo", "low", 60),
        ("Add a page", "medium", 180),
    ],
)
def test_complexity_and_duration(title: str, complexity: str, minutes: int) -> None:
    result = analyse(title, "")
    assert (result.complexity, result.estimated_duration_minutes) == (complexity, minutes)
