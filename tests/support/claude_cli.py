"""Fixtures for the tiers that drive the real Claude Code CLI against the fake Anthropic API.

``tests/conftest.py`` loads this module as a plugin, so every tier can ask for them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from claude_cluster.runners.claude_code import find_claude_cli
from tests.fakes.anthropic_api import FakeAnthropic

__all__ = ["claude_cli", "fake_api"]


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
