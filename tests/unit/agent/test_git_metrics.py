"""``claude_git_operations_total`` counts each git command by subcommand for the agent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_cluster import metrics
from claude_cluster.agent import git


@pytest.fixture
def counting() -> Iterator[str]:
    git.count_operations_as("agent-metrics-test")
    try:
        yield "agent-metrics-test"
    finally:
        git.count_operations_as("")


def count(agent_id: str, operation: str) -> float:
    value = metrics.AGENT.get_sample_value(
        "claude_git_operations_total", {"agent_id": agent_id, "operation": operation}
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("args", "operation"),
    [
        (("fetch", "--prune", "origin"), "fetch"),
        (("-c", "http.extraHeader=x", "push", "origin"), "push"),
        (("-C", "/tmp", "--no-pager", "status"), "status"),
        (("--version",), "git"),
    ],
)
def test_the_operation_is_the_subcommand(args: tuple[str, ...], operation: str) -> None:
    assert git.operation_of(args) == operation


async def test_each_command_is_counted_under_the_agent(counting: str, tmp_path: Path) -> None:
    before = count(counting, "init")
    await git.git("init", "--quiet", str(tmp_path / "repo"))
    await git.git("-C", str(tmp_path / "repo"), "status", "--porcelain")
    assert count(counting, "init") == before + 1
    assert count(counting, "status") >= 1


async def test_nothing_is_counted_before_the_agent_is_known(tmp_path: Path) -> None:
    await git.git("init", "--quiet", str(tmp_path / "repo"))
    assert count("", "init") == 0
