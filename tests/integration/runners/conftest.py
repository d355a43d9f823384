"""Fixtures for driving the real Claude Code CLI against the fake Anthropic API."""

from __future__ import annotations

from pathlib import Path

import pytest

from claude_cluster.runners.claude_code import ClaudeCodeRunner
from tests.integration.runners.harness import ClaudeRun, make_repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def run_claude(claude_cli: str, repo: Path, tmp_path: Path) -> ClaudeRun:
    """Run the real CLI in ``repo`` with a per-test HOME."""
    runner = ClaudeCodeRunner(cli_path=claude_cli, kill_grace=2.0)
    return ClaudeRun(repo, tmp_path / "home", runner)
