"""Fixtures for driving the real Claude Code CLI against the fake Anthropic API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_cluster.runners.claude_code import ClaudeCodeRunner, find_claude_cli
from tests.fakes.anthropic_api import FakeAnthropic
from tests.integration.runners.harness import ClaudeRun, make_repo


@pytest.fixture(scope="session")
def claude_cli() -> str:
    cli = find_claude_cli()
    if cli is None:
        pytest.skip("the Claude Code CLI is not installed (install the `agent` extra)")
    return cli


@pytest.fixture
def fake_api() -> Iterator[FakeAnthropic]:
    with FakeAnthropic.start() as server:
        yield server


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def run_claude(claude_cli: str, repo: Path, tmp_path: Path) -> ClaudeRun:
    """Run the real CLI in ``repo`` with a per-test HOME."""
    runner = ClaudeCodeRunner(cli_path=claude_cli, kill_grace=2.0)
    return ClaudeRun(repo, tmp_path / "home", runner)
