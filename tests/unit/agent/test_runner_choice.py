"""Which runner a run uses: the contract's when the agent has it, else a refusal naming it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from claude_cluster.agent.config import AgentSettings
from claude_cluster.agent.daemon import runner_choice
from claude_cluster.agent.runner_choice import RunnerChoice, RunnerUnavailable
from claude_cluster.runners import get_runner


def settings(tmp_path: Path, **values: object) -> AgentSettings:
    return AgentSettings(  # type: ignore[call-arg]
        _env_file=None,
        coordinator_url="http://127.0.0.1:8080",
        registration_token="r" * 24,
        workspace_path=tmp_path / "ws",
        **values,
    )


@pytest.fixture(autouse=True)
def _no_codex(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A PATH with python only: no codex or aider, whatever the host has; no HOME login."""
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def test_no_runner_named_or_its_own_is_the_agents_own() -> None:
    own = get_runner("command", command="true")
    choice = RunnerChoice(own)
    assert choice.pick(None) is own
    assert choice.pick("command") is own
    with pytest.raises(RunnerUnavailable, match="runner claude, which this agent cannot run"):
        choice.pick("claude")


def test_a_runner_the_agent_has_is_built_once_from_its_settings(tmp_path: Path) -> None:
    choice = runner_choice(
        settings(
            tmp_path,
            agent_runner="claude",
            claude_code_cli_path=sys.executable,  # found; never run here
            anthropic_api_key="sk-test",
            agent_command=f"{sys.executable} fixer.py",
        )
    )
    assert choice.default.name == "claude"
    command = choice.pick("command")
    assert command.name == "command" and command is choice.pick("command")
    assert getattr(command, "argv", None) == [sys.executable, "fixer.py"]


@pytest.mark.parametrize(
    ("values", "name", "words"),
    [
        # not installed: the executable is not on this agent's PATH
        ({}, "codex", "'codex' is not installed on this agent"),
        ({}, "aider", "'aider' is not installed on this agent"),
        ({"claude_code_cli_path": "/nowhere/claude"}, "claude", "Claude Code CLI is not found"),
        # the command runner has nothing to run without AGENT_COMMAND
        ({"agent_runner": "claude"}, "command", "AGENT_COMMAND is not set on this agent"),
        # found, but no model credential: refused before any model call, not an auth_error
        ({"claude_code_cli_path": sys.executable}, "claude", "no model credential"),
    ],
)
def test_a_runner_the_agent_does_not_have_is_refused_by_name(
    tmp_path: Path, values: dict[str, object], name: str, words: str
) -> None:
    base: dict[str, object] = {"agent_runner": "command", "agent_command": "true"}
    if values.get("agent_runner") == "claude":
        base = {"claude_code_cli_path": sys.executable, "anthropic_api_key": "sk-test"}
    choice = runner_choice(settings(tmp_path, **{**base, **values}))
    with pytest.raises(RunnerUnavailable) as refused:
        choice.pick(name)
    message = str(refused.value)
    assert message.startswith(f"the contract names runner {name}, which this agent cannot run")
    assert words in message


def test_an_agent_offers_its_own_runner_and_those_it_can_build(tmp_path: Path) -> None:
    """What the agent tells the coordinator (registration, heartbeats): only the runners
    that pass the same checks a run's pick makes."""
    assert RunnerChoice(get_runner("command", command="true")).offered() == ["command"]
    both = runner_choice(
        settings(
            tmp_path,
            agent_runner="command",
            agent_command="true",
            claude_code_cli_path=sys.executable,
            anthropic_api_key="sk-test",
        )
    )
    assert both.offered() == ["claude", "command"]
    no_key = runner_choice(
        settings(
            tmp_path,
            agent_runner="command",
            agent_command="true",
            claude_code_cli_path=sys.executable,
        )
    )
    assert no_key.offered() == ["command"]
    for name in ("codex", "aider"):
        assert name not in both.offered()  # not on this PATH
