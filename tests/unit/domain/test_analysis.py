from __future__ import annotations

import pytest

from claude_cluster.domain.analysis import (
    analyse,
    preferences_from_text,
    priority_from_labels,
    requirements_from_labels,
)
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


def test_keywords_are_preferences_matched_as_whole_words() -> None:
    # "build" contains "ui" and "capital" contains "api": neither is a match
    assert preferences_from_text("Build the capital page", "") == []
    assert preferences_from_text("Fix the API", "the server is slow") == ["backend", "testing"]
    assert preferences_from_text("New React component", "") == ["frontend"]
    assert preferences_from_text("Deploy with Docker", "") == ["devops"]


def test_only_trigger_labels_name_requirements() -> None:
    assert requirements_from_labels(["claude-code-security", "bug"]) == ["security"]
    assert requirements_from_labels(["bug"]) == ["general"]
    # "bug" and "fix" in an issue no longer make it require testing: they prefer it
    result = analyse("Fix the bug in the parser", "it crashes", ["bug"])
    assert (result.requirements, result.preferences) == (["general"], ["testing"])
    labelled = analyse("Fix the API", "", ["claude-code-testing"])
    assert (labelled.requirements, labelled.preferences) == (["testing"], ["backend", "testing"])


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
