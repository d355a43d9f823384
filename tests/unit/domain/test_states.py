from __future__ import annotations

import itertools

import pytest

from claude_cluster.domain.states import (
    TERMINAL_TASK_STATUSES,
    TRANSITIONS,
    AgentStatus,
    TaskStatus,
    check_transition,
    status_for_load,
)
from claude_cluster.errors import IllegalTransition


def test_terminal_statuses_go_nowhere() -> None:
    for status in TERMINAL_TASK_STATUSES:
        assert TRANSITIONS[status] == frozenset()


def test_every_live_status_can_be_cancelled() -> None:
    for status in TaskStatus:
        if status not in TERMINAL_TASK_STATUSES:
            check_transition(status, TaskStatus.CANCELLED)


def test_illegal_transition_names_both_statuses() -> None:
    with pytest.raises(IllegalTransition, match="completed to cancelled"):
        check_transition(TaskStatus.COMPLETED, TaskStatus.CANCELLED)
    with pytest.raises(IllegalTransition):
        check_transition(TaskStatus.QUEUED, TaskStatus.REVIEW)


def test_the_seed_path_is_allowed() -> None:
    path = ["queued", "assigned", "in_progress", "testing", "review", "completed"]
    for current, target in itertools.pairwise(path):
        check_transition(TaskStatus(current), TaskStatus(target))
    check_transition(TaskStatus.IN_PROGRESS, TaskStatus.QUEUED)  # lost agent, retry
    check_transition(TaskStatus.REVIEW, TaskStatus.QUEUED)  # review feedback


def test_agent_status_follows_load() -> None:
    assert status_for_load(0, 3) == AgentStatus.IDLE
    assert status_for_load(2, 3) == AgentStatus.BUSY
    assert status_for_load(3, 3) == AgentStatus.OVERLOADED
